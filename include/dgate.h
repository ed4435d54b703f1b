/*
 * dgate.h: the C interface of dgate-rt, early-exit CNN inference with decision gates.
 *
 * Link with -ldgate_rt (libdgate_rt.so, built by `cargo build --release` in target/release).
 * C99. Every function but dgate_version and dgate_last_error returns a dgate_status.
 *
 * Typical use:
 *
 *     dgate_engine *e = NULL;
 *     if (dgate_create("resnet20.safetensors", "auto", "f32", &e) != DGATE_OK) {
 *         fprintf(stderr, "dgate: %s\n", dgate_last_error());
 *         return 1;
 *     }
 *     int32_t cls[N], exit_gate[N];
 *     float score[N];
 *     dgate_run_u8(e, pixels, N * DGATE_IMAGE_SIZE, N, cls, exit_gate, score, NULL, 0);
 *     dgate_destroy(e);
 *
 * Errors. A failing call returns a non-zero status and leaves a one-line message for
 * dgate_last_error(). No call aborts the process or lets a Rust panic escape: bad input
 * (NULL pointers, wrong lengths or counts, unknown names, bad weights files) is reported
 * by status. An internal bug is reported as DGATE_ERR_INTERNAL.
 *
 * Handles. A dgate_engine* is an opaque token, never a memory address to dereference.
 * Every call checks that it names a live engine, so using a destroyed handle, destroying
 * twice, or passing a pointer that dgate_create did not return yields
 * DGATE_ERR_INVALID_HANDLE (token values are never reused).
 *
 * Threads. An engine may be used from any thread. Calls on the same engine from several
 * threads at once are serialised by a lock inside the engine; use one engine per thread
 * to run in parallel. Destroying an engine that another thread is running is safe: it is
 * freed when that run returns, and later calls with the handle fail as above.
 *
 * Undefined behaviour (not detectable): a non-NULL buffer shorter than the length the
 * call states or implies; a string argument without a terminating NUL; reading the
 * dgate_last_error() string after the next dgate_ call on the same thread.
 */
#ifndef DGATE_H
#define DGATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Values per image: 3 channels (R, G, B planes) of 32 x 32. */
#define DGATE_IMAGE_SIZE 3072

/** Status of a call. Values are stable. */
typedef enum dgate_status {
    DGATE_OK = 0,                   /**< success */
    DGATE_ERR_NULL_POINTER = 1,     /**< a required pointer argument was NULL */
    DGATE_ERR_INVALID_ARGUMENT = 2, /**< a wrong value or size: length, count, name, threshold */
    DGATE_ERR_LOAD = 3,             /**< the weights could not be read or understood */
    DGATE_ERR_CUDA_UNAVAILABLE = 4, /**< "cuda" requested, but no driver, NVRTC or GPU */
    DGATE_ERR_INVALID_HANDLE = 5,   /**< the engine is destroyed, or was never created */
    DGATE_ERR_BACKEND = 6,          /**< the backend failed while running (CUDA error) */
    DGATE_ERR_INTERNAL = 7          /**< a bug (a caught panic); the message says where */
} dgate_status;

/** An engine: a loaded model on a backend, with its buffers and compiled kernels. */
typedef struct dgate_engine dgate_engine;

/** The library version, e.g. "0.1.0". Static; never NULL. */
const char *dgate_version(void);

/**
 * The message of the last failed dgate_ call on this thread, "" after a success.
 * Never NULL. Valid until the next dgate_ call on this thread: copy it to keep it.
 */
const char *dgate_last_error(void);

/**
 * Loads a PyTorch state_dict saved as safetensors (architecture inferred, gates and their
 * thresholds read from the file) and creates an engine.
 *
 * backend:   "auto" (CUDA if present, else CPU), "cpu" or "cuda"; NULL means "auto".
 * precision: "f32" or "f16" (f16 needs CUDA); NULL means "f32".
 * out:       receives the engine; set to NULL on failure.
 *
 * Errors: DGATE_ERR_NULL_POINTER (weights_path or out), DGATE_ERR_INVALID_ARGUMENT (an
 * unknown backend or precision, f16 on the CPU), DGATE_ERR_LOAD (missing or malformed
 * file, unsupported architecture), DGATE_ERR_CUDA_UNAVAILABLE ("cuda" without a GPU).
 */
dgate_status dgate_create(const char *weights_path, const char *backend,
                          const char *precision, dgate_engine **out);

/** As dgate_create, from a safetensors image of len bytes in memory (copied). */
dgate_status dgate_create_from_memory(const void *bytes, size_t len, const char *backend,
                                      const char *precision, dgate_engine **out);

/** Destroys an engine. NULL is a no-op returning DGATE_OK. */
dgate_status dgate_destroy(dgate_engine *engine);

/** Writes the number of classes (the length of each sample's logits). */
dgate_status dgate_num_classes(const dgate_engine *engine, int32_t *out);

/** Writes the number of decision gates (0 for a plain network). */
dgate_status dgate_num_gates(const dgate_engine *engine, int32_t *out);

/**
 * Writes the input normalisation the model expects, per R, G, B channel on the 0..1 pixel
 * scale: x = (p / 255 - mean) / std. mean and std each receive 3 floats. Needed only to
 * prepare input for dgate_run_f32.
 */
dgate_status dgate_normalization(const dgate_engine *engine, float mean[3], float std[3]);

/**
 * Sets one threshold per gate, in network order; count must equal dgate_num_gates. A
 * hinge gate lets a sample exit when its largest score is at least the threshold (a
 * cross-entropy gate: its largest softmax probability). INFINITY never exits, -INFINITY
 * always does. NaN is rejected. On failure the thresholds are unchanged.
 * thresholds may be NULL when count is 0.
 */
dgate_status dgate_set_thresholds(dgate_engine *engine, const float *thresholds, size_t count);

/** Copies the current thresholds into out; count must equal dgate_num_gates. */
dgate_status dgate_get_thresholds(const dgate_engine *engine, float *out, size_t count);

/**
 * Writes the backend's name, e.g. "cpu (2 threads)", NUL-terminated, into buf of capacity
 * bytes (64 is ample). Tells whether "auto" found a GPU.
 */
dgate_status dgate_backend_name(const dgate_engine *engine, char *buf, size_t capacity);

/**
 * Classifies n raw CIFAR-style images and writes one result per image, in input order.
 *
 * pixels:     n images of DGATE_IMAGE_SIZE bytes, each its red, green and blue 32x32
 *             planes, row-major (a CIFAR-10 binary record without its label byte);
 *             pixels_len must equal n * DGATE_IMAGE_SIZE. The model's normalisation is
 *             applied.
 * classes:    n int32: the predicted class.
 * exits:      n int32: the gate (0-based, network order) the image left at, -1 if it ran
 *             through the whole network.
 * scores:     n floats: the confidence it was decided on (the gate's, or the head's
 *             largest logit).
 * logits:     NULL, or logits_len >= n * num_classes floats: for image i, at
 *             logits[i * num_classes], the scores it was decided on (the head's logits,
 *             or the exiting gate's scores).
 *
 * n = 0 is a no-op and touches no buffer. Errors: DGATE_ERR_NULL_POINTER,
 * DGATE_ERR_INVALID_ARGUMENT (a length mismatch, a misaligned buffer), DGATE_ERR_BACKEND.
 * After a failure the output buffers hold unspecified values.
 */
dgate_status dgate_run_u8(dgate_engine *engine, const uint8_t *pixels, size_t pixels_len,
                          size_t n, int32_t *classes, int32_t *exits, float *scores,
                          float *logits, size_t logits_len);

/**
 * As dgate_run_u8, for n images already normalised (see dgate_normalization): images is
 * n * DGATE_IMAGE_SIZE floats, NCHW, RGB; images_len must equal n * DGATE_IMAGE_SIZE.
 */
dgate_status dgate_run_f32(dgate_engine *engine, const float *images, size_t images_len,
                           size_t n, int32_t *classes, int32_t *exits, float *scores,
                           float *logits, size_t logits_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DGATE_H */
