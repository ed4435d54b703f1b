/*
 * A C client of dgate-rt, built and run by tests/c_abi.rs.
 *
 *   classify run WEIGHTS TEST_BATCH N CHUNK u8|f32 [THRESHOLD...]
 *       Classifies the first N images of a CIFAR-10 binary file in chunks of CHUNK
 *       through dgate_run_u8 (raw bytes) or dgate_run_f32 (normalised here with
 *       dgate_normalization), with the given gate thresholds, on the CPU backend.
 *       Prints one line per image: "R index class exit score logits..." with every
 *       float as the hexadecimal bits of its IEEE-754 value, so the Rust side can
 *       compare exactly; then "accuracy PCT".
 *
 *   classify errors WEIGHTS_WITH_2_GATES TEST_BATCH
 *       Exercises the error paths; prints "ok LABEL" per check, "FAIL ..." on a
 *       mismatch, and exits non-zero if any check failed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dgate.h"

#define RECORD (1 + DGATE_IMAGE_SIZE)

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* Reads a whole file; NULL on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long size;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* The first n images of a CIFAR-10 binary file, split into pixels and labels. */
static int load_images(const char *path, size_t n, uint8_t **pixels, uint8_t **labels) {
    size_t len = 0, i;
    unsigned char *raw = read_file(path, &len);
    if (!raw || len < n * RECORD) {
        fprintf(stderr, "%s: cannot read %lu records\n", path, (unsigned long)n);
        free(raw);
        return 0;
    }
    *pixels = malloc(n * DGATE_IMAGE_SIZE + 1);
    *labels = malloc(n + 1);
    if (!*pixels || !*labels) {
        free(raw);
        return 0;
    }
    for (i = 0; i < n; i++) {
        (*labels)[i] = raw[i * RECORD];
        memcpy(*pixels + i * DGATE_IMAGE_SIZE, raw + i * RECORD + 1, DGATE_IMAGE_SIZE);
    }
    free(raw);
    return 1;
}

static int run(int argc, char **argv) {
    const char *weights = argv[2], *data = argv[3], *mode = argv[6];
    size_t n = (size_t)strtoul(argv[4], NULL, 10), chunk = (size_t)strtoul(argv[5], NULL, 10);
    int use_f32 = strcmp(mode, "f32") == 0;
    uint8_t *pixels = NULL, *labels = NULL;
    float *images = NULL, *thresholds = NULL, *scores, *logits, mean[3], std[3];
    int32_t *classes, *exits, n_classes = 0, n_gates = 0;
    dgate_engine *engine = NULL;
    size_t i, j, start, correct = 0;
    char backend[64];
    int k, n_thresholds = argc - 7;

    if (n == 0 || chunk == 0 || !load_images(data, n, &pixels, &labels)) return 2;
    if (dgate_create(weights, "cpu", "f32", &engine) != DGATE_OK) {
        fprintf(stderr, "dgate_create: %s\n", dgate_last_error());
        return 2;
    }
    if (dgate_num_classes(engine, &n_classes) != DGATE_OK ||
        dgate_num_gates(engine, &n_gates) != DGATE_OK ||
        dgate_backend_name(engine, backend, sizeof backend) != DGATE_OK ||
        dgate_normalization(engine, mean, std) != DGATE_OK) {
        fprintf(stderr, "engine queries: %s\n", dgate_last_error());
        return 2;
    }
    if (n_thresholds > 0) {
        thresholds = malloc(sizeof(float) * (size_t)n_thresholds);
        if (!thresholds) return 2;
        for (k = 0; k < n_thresholds; k++) thresholds[k] = strtof(argv[7 + k], NULL);
        if (dgate_set_thresholds(engine, thresholds, (size_t)n_thresholds) != DGATE_OK) {
            fprintf(stderr, "dgate_set_thresholds: %s\n", dgate_last_error());
            return 2;
        }
    }
    printf("backend %s\nclasses %d\ngates %d\n", backend, (int)n_classes, (int)n_gates);

    if (use_f32) {
        images = malloc(sizeof(float) * n * DGATE_IMAGE_SIZE);
        if (!images) return 2;
        for (i = 0; i < n * DGATE_IMAGE_SIZE; i++) {
            size_t c = (i % DGATE_IMAGE_SIZE) / 1024;
            images[i] = ((float)pixels[i] / 255.0f - mean[c]) / std[c];
        }
    }
    classes = malloc(sizeof(int32_t) * n);
    exits = malloc(sizeof(int32_t) * n);
    scores = malloc(sizeof(float) * n);
    logits = malloc(sizeof(float) * n * (size_t)n_classes);
    if (!classes || !exits || !scores || !logits) return 2;

    /* The engine is reused across chunks: buffers and kernels persist between calls. */
    for (start = 0; start < n; start += chunk) {
        size_t m = n - start < chunk ? n - start : chunk;
        size_t off = start * DGATE_IMAGE_SIZE;
        dgate_status s;
        if (use_f32)
            s = dgate_run_f32(engine, images + off, m * DGATE_IMAGE_SIZE, m, classes + start,
                              exits + start, scores + start, logits + start * (size_t)n_classes,
                              m * (size_t)n_classes);
        else
            s = dgate_run_u8(engine, pixels + off, m * DGATE_IMAGE_SIZE, m, classes + start,
                             exits + start, scores + start, logits + start * (size_t)n_classes,
                             m * (size_t)n_classes);
        if (s != DGATE_OK) {
            fprintf(stderr, "run: status %d: %s\n", (int)s, dgate_last_error());
            return 2;
        }
    }
    for (i = 0; i < n; i++) {
        printf("R %lu %d %d %08lx", (unsigned long)i, (int)classes[i], (int)exits[i],
               (unsigned long)bits(scores[i]));
        for (j = 0; j < (size_t)n_classes; j++)
            printf(" %08lx", (unsigned long)bits(logits[i * (size_t)n_classes + j]));
        printf("\n");
        correct += classes[i] == (int32_t)labels[i];
    }
    printf("accuracy %.2f\n", 100.0 * (double)correct / (double)n);
    if (dgate_destroy(engine) != DGATE_OK) return 2;
    free(pixels);
    free(labels);
    free(images);
    free(thresholds);
    free(classes);
    free(exits);
    free(scores);
    free(logits);
    return 0;
}

static int failures = 0, passed = 0;

/* Checks a status and, for a failure, that a message was left. */
static void expect(const char *label, dgate_status got, dgate_status want) {
    const char *msg = dgate_last_error();
    if (got != want) {
        printf("FAIL %s: status %d, expected %d (%s)\n", label, (int)got, (int)want, msg);
        failures++;
    } else if (want != DGATE_OK && (msg == NULL || msg[0] == '\0')) {
        printf("FAIL %s: status %d but an empty last error\n", label, (int)got);
        failures++;
    } else if (want == DGATE_OK && (msg == NULL || msg[0] != '\0')) {
        printf("FAIL %s: success but last error is \"%s\"\n", label, msg ? msg : "(null)");
        failures++;
    } else {
        printf("ok %s%s%s\n", label, want != DGATE_OK ? ": " : "", want != DGATE_OK ? msg : "");
        passed++;
    }
}

static void check(const char *label, int cond) {
    if (!cond) {
        printf("FAIL %s\n", label);
        failures++;
    } else {
        printf("ok %s\n", label);
        passed++;
    }
}

static float zeros[2 * DGATE_IMAGE_SIZE];

static int errors(char **argv) {
    const char *weights = argv[2], *data = argv[3];
    dgate_engine *e = NULL, *e2 = NULL, *stale;
    dgate_engine *fake = (dgate_engine *)(uintptr_t)0x1230;
    uint8_t *pixels = NULL, *labels = NULL;
    int32_t cls[2], ex[2], count = -1;
    float sc[2], lg[20], lg2[20], t[2], t_back[2] = {0, 0}, mean[3], std[3];
    char name[64];
    unsigned char *bytes;
    size_t len = 0;
    dgate_status s;

    check("version is non-empty", dgate_version() != NULL && dgate_version()[0] != '\0');
    check("last error starts empty", dgate_last_error()[0] == '\0');
    if (!load_images(data, 2, &pixels, &labels)) return 2;

    /* Creation. */
    expect("create: NULL path", dgate_create(NULL, "cpu", "f32", &e), DGATE_ERR_NULL_POINTER);
    expect("create: NULL out", dgate_create(weights, "cpu", "f32", NULL), DGATE_ERR_NULL_POINTER);
    e = (dgate_engine *)(uintptr_t)0x99990;
    expect("create: missing file", dgate_create("/nonexistent/w.safetensors", "cpu", "f32", &e),
           DGATE_ERR_LOAD);
    check("create: missing file names the file", strstr(dgate_last_error(), "/nonexistent/w") != NULL);
    check("create: failure sets *out to NULL", e == NULL);
    expect("create: not a safetensors file", dgate_create(data, "cpu", "f32", &e), DGATE_ERR_LOAD);
    expect("create: unknown backend", dgate_create(weights, "tpu", "f32", &e),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("create: unknown precision", dgate_create(weights, "cpu", "f64", &e),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("create: f16 on the cpu", dgate_create(weights, "cpu", "f16", &e),
           DGATE_ERR_INVALID_ARGUMENT);
    s = dgate_create(weights, "cuda", "f32", &e);
    if (s == DGATE_OK) {
        check("create: cuda works here", e != NULL);
        dgate_destroy(e);
    } else {
        expect("create: cuda without a GPU", s, DGATE_ERR_CUDA_UNAVAILABLE);
    }
    expect("create: from memory, NULL bytes", dgate_create_from_memory(NULL, 10, "cpu", "f32", &e),
           DGATE_ERR_NULL_POINTER);
    expect("create: from memory, garbage", dgate_create_from_memory("garbage", 7, "cpu", "f32", &e),
           DGATE_ERR_LOAD);

    expect("create: cpu f32", dgate_create(weights, "cpu", "f32", &e), DGATE_OK);
    expect("create: defaults (NULL backend and precision)", dgate_create(weights, NULL, NULL, &e2),
           DGATE_OK);
    expect("destroy the second engine", dgate_destroy(e2), DGATE_OK);

    /* Queries. */
    expect("num_classes: NULL engine", dgate_num_classes(NULL, &count), DGATE_ERR_NULL_POINTER);
    expect("num_classes: NULL out", dgate_num_classes(e, NULL), DGATE_ERR_NULL_POINTER);
    expect("num_classes", dgate_num_classes(e, &count), DGATE_OK);
    check("10 classes", count == 10);
    expect("num_gates", dgate_num_gates(e, &count), DGATE_OK);
    check("2 gates", count == 2);
    expect("normalization: NULL std", dgate_normalization(e, mean, NULL), DGATE_ERR_NULL_POINTER);
    expect("normalization", dgate_normalization(e, mean, std), DGATE_OK);
    check("normalization std > 0", std[0] > 0 && std[1] > 0 && std[2] > 0);
    expect("backend_name: too small", dgate_backend_name(e, name, 2), DGATE_ERR_INVALID_ARGUMENT);
    expect("backend_name", dgate_backend_name(e, name, sizeof name), DGATE_OK);
    check("backend is the cpu", strncmp(name, "cpu", 3) == 0);

    /* Thresholds. */
    t[0] = 1.5f;
    t[1] = INFINITY;
    expect("set_thresholds", dgate_set_thresholds(e, t, 2), DGATE_OK);
    expect("set_thresholds: wrong count", dgate_set_thresholds(e, t, 1), DGATE_ERR_INVALID_ARGUMENT);
    expect("set_thresholds: NULL array", dgate_set_thresholds(e, NULL, 2), DGATE_ERR_NULL_POINTER);
    t[1] = NAN;
    expect("set_thresholds: NaN", dgate_set_thresholds(e, t, 2), DGATE_ERR_INVALID_ARGUMENT);
    expect("get_thresholds: wrong count", dgate_get_thresholds(e, t_back, 3),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("get_thresholds", dgate_get_thresholds(e, t_back, 2), DGATE_OK);
    check("failed sets left the thresholds unchanged", t_back[0] == 1.5f && isinf(t_back[1]));

    /* Runs. */
    expect("run: NULL engine",
           dgate_run_u8(NULL, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, NULL, 0),
           DGATE_ERR_NULL_POINTER);
    expect("run: NULL classes",
           dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, NULL, ex, sc, NULL, 0),
           DGATE_ERR_NULL_POINTER);
    expect("run: NULL exits",
           dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, NULL, sc, NULL, 0),
           DGATE_ERR_NULL_POINTER);
    expect("run: NULL scores",
           dgate_run_f32(e, zeros, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, NULL, NULL, 0),
           DGATE_ERR_NULL_POINTER);
    expect("run: NULL pixels", dgate_run_u8(e, NULL, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, NULL, 0),
           DGATE_ERR_NULL_POINTER);
    expect("run: length does not match n",
           dgate_run_u8(e, pixels, DGATE_IMAGE_SIZE, 2, cls, ex, sc, NULL, 0),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("run: n overflows",
           dgate_run_u8(e, pixels, DGATE_IMAGE_SIZE, (size_t)-1, cls, ex, sc, NULL, 0),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("run: logits too short",
           dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, lg, 19),
           DGATE_ERR_INVALID_ARGUMENT);
    expect("run: n = 0 is a no-op", dgate_run_u8(e, NULL, 0, 0, NULL, NULL, NULL, NULL, 0), DGATE_OK);
    expect("run: u8", dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, lg, 20),
           DGATE_OK);
    check("run: classes in range", cls[0] >= 0 && cls[0] < 10 && cls[1] >= 0 && cls[1] < 10);
    check("run: exits in range", ex[0] >= -1 && ex[0] < 2 && ex[1] >= -1 && ex[1] < 2);
    expect("run: without logits", dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, NULL, 0),
           DGATE_OK);

    /* The same engine from bytes in memory gives the same answers. */
    bytes = read_file(weights, &len);
    check("read the weights", bytes != NULL);
    if (bytes) {
        int32_t cls2[2], ex2[2];
        float sc2[2];
        expect("create from memory", dgate_create_from_memory(bytes, len, "cpu", "f32", &e2), DGATE_OK);
        free(bytes);
        t[1] = INFINITY;
        expect("set_thresholds (memory engine)", dgate_set_thresholds(e2, t, 2), DGATE_OK);
        expect("run (memory engine)",
               dgate_run_u8(e2, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls2, ex2, sc2, lg2, 20), DGATE_OK);
        expect("run (file engine)",
               dgate_run_u8(e, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, lg, 20), DGATE_OK);
        check("memory and file engines agree",
              memcmp(cls, cls2, sizeof cls) == 0 && memcmp(ex, ex2, sizeof ex) == 0 &&
                  memcmp(sc, sc2, sizeof sc) == 0 && memcmp(lg, lg2, sizeof lg) == 0);
        expect("destroy (memory engine)", dgate_destroy(e2), DGATE_OK);
    }

    /* Handles. */
    expect("num_classes: never-created handle", dgate_num_classes(fake, &count),
           DGATE_ERR_INVALID_HANDLE);
    expect("destroy: never-created handle", dgate_destroy(fake), DGATE_ERR_INVALID_HANDLE);
    stale = e;
    expect("destroy", dgate_destroy(e), DGATE_OK);
    expect("num_classes after destroy", dgate_num_classes(stale, &count), DGATE_ERR_INVALID_HANDLE);
    expect("run after destroy",
           dgate_run_u8(stale, pixels, 2 * DGATE_IMAGE_SIZE, 2, cls, ex, sc, NULL, 0),
           DGATE_ERR_INVALID_HANDLE);
    expect("set_thresholds after destroy", dgate_set_thresholds(stale, t, 2), DGATE_ERR_INVALID_HANDLE);
    expect("double destroy", dgate_destroy(stale), DGATE_ERR_INVALID_HANDLE);
    expect("destroy NULL", dgate_destroy(NULL), DGATE_OK);
    check("last error cleared by a success", dgate_last_error()[0] == '\0');

    free(pixels);
    free(labels);
    printf("%d checks passed, %d failed\n", passed, failures);
    return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 7 && strcmp(argv[1], "run") == 0) return run(argc, argv);
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return errors(argv);
    fprintf(stderr,
            "usage: %s run WEIGHTS TEST_BATCH N CHUNK u8|f32 [THRESHOLD...]\n"
            "       %s errors WEIGHTS_WITH_2_GATES TEST_BATCH\n",
            argv[0], argv[0]);
    return 2;
}
