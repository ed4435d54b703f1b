//! The C ABI: the functions declared in `include/dgate.h`, exported by the `cdylib`
//! (`libdgate_rt.so`). The header is the reference for C callers; this comment says how
//! the Rust side keeps its promises.
//!
//! - **No unwinding across the boundary.** Every body runs inside
//!   [`std::panic::catch_unwind`]; a panic becomes [`Status::Internal`] with its message in
//!   [`dgate_last_error`]. (The default panic hook still prints the panic to stderr.)
//! - **Handles are registry tokens, not addresses.** `dgate_create` hands out a fresh,
//!   never-reused id disguised as an opaque pointer, and keeps the engine in a global table
//!   keyed by it. Every call looks the token up before touching anything, so a destroyed
//!   handle, a double destroy or a pointer that never came from `dgate_create` is reported
//!   as [`Status::InvalidHandle`] instead of dereferencing freed memory. (This subsumes a
//!   magic-number field: a tag inside a freed allocation can only be checked by reading
//!   freed memory, which is itself undefined.)
//! - **One engine, many threads.** Each engine sits behind a [`Mutex`], so concurrent calls
//!   on one handle are serialised; different handles run in parallel. Destroying a handle
//!   while another thread runs it is safe: the engine is freed when that run returns.
//! - **What stays undefined**: buffers that are non-NULL but shorter than the lengths the
//!   caller states, strings that are not NUL-terminated, and using the pointer returned by
//!   `dgate_last_error` after the next `dgate_` call on the same thread.
#![warn(missing_docs)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::backend::Precision;
use crate::data::IMAGE;
use crate::engine::{BackendChoice, Engine};
use crate::model::Model;
use crate::plan::SampleResult;
use crate::Error;

/// Status codes; mirrors `dgate_status` in `include/dgate.h` (same values, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = 1,
    /// An argument has a wrong value or size (lengths, counts, names, thresholds).
    InvalidArgument = 2,
    /// The weights could not be read or understood.
    Load = 3,
    /// `cuda` was asked for but the driver, NVRTC or a GPU is missing.
    CudaUnavailable = 4,
    /// The engine handle is not live: destroyed, or never created.
    InvalidHandle = 5,
    /// The backend failed while running (a CUDA error, a kernel that did not compile).
    Backend = 6,
    /// A bug: a panic was caught, or an engine is unusable after one.
    Internal = 7,
}

/// The opaque engine type behind `dgate_engine*`. Never dereferenced: a handle's value is
/// a registry token.
pub struct DgateEngine {
    _private: [u8; 0],
}

/// A failed call: its status and message.
struct Fail(Status, String);

type Outcome = std::result::Result<(), Fail>;

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Io { .. }
            | Error::Safetensors { .. }
            | Error::Tensor { .. }
            | Error::Architecture { .. }
            | Error::Data { .. } => Status::Load,
            Error::Config(_) | Error::Input(_) => Status::InvalidArgument,
            Error::CudaUnavailable(_) => Status::CudaUnavailable,
            Error::Cuda(_) | Error::Compile { .. } => Status::Backend,
        };
        Fail(status, e.to_string())
    }
}

fn null(what: &str) -> Fail {
    Fail(Status::NullPointer, format!("`{what}` is NULL"))
}

fn invalid(msg: String) -> Fail {
    Fail(Status::InvalidArgument, msg)
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    // Interior NULs would truncate the message in C; show them instead.
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; never panic out of here.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = msg);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Runs a call body: clears the thread's last error, catches panics, maps failures to a
/// status and a message.
fn guard(body: impl FnOnce() -> Outcome) -> Status {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(Fail(status, msg))) => {
            set_last_error(&msg);
            status
        }
        Err(payload) => {
            set_last_error(&format!(
                "internal error (a Rust panic was caught): {}",
                panic_message(payload.as_ref())
            ));
            Status::Internal
        }
    }
}

type Registry = Mutex<HashMap<usize, Arc<Mutex<Engine>>>>;

fn registry() -> MutexGuard<'static, HashMap<usize, Arc<Mutex<Engine>>>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    // Only plain map operations run under this lock, so a poisoned lock still holds a
    // consistent map.
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Tokens start high and step by 16 so that they look like aligned addresses in a
/// debugger and small integers passed by mistake are never live handles.
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0xD6A7_0000);

fn lookup(h: *const DgateEngine) -> std::result::Result<Arc<Mutex<Engine>>, Fail> {
    if h.is_null() {
        return Err(null("engine"));
    }
    registry().get(&(h as usize)).cloned().ok_or_else(|| {
        Fail(
            Status::InvalidHandle,
            format!("engine handle {h:p} is not live (destroyed, or not made by dgate_create)"),
        )
    })
}

/// Runs `f` on the engine behind `h`, holding its lock.
fn with_engine<T>(
    h: *const DgateEngine,
    f: impl FnOnce(&mut Engine) -> std::result::Result<T, Fail>,
) -> std::result::Result<T, Fail> {
    let slot = lookup(h)?;
    let mut engine = slot.lock().map_err(|_| {
        Fail(
            Status::Internal,
            "this engine is unusable after an earlier internal error; destroy it".into(),
        )
    })?;
    f(&mut engine)
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> std::result::Result<Option<&'a str>, Fail> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|_| invalid(format!("`{what}` is not valid UTF-8")))
}

fn check_aligned<T>(p: *const T, what: &str) -> Outcome {
    if !p.is_aligned() {
        return Err(invalid(format!(
            "`{what}` ({p:p}) is not aligned for its element type"
        )));
    }
    Ok(())
}

/// # Safety
/// `out` is non-NULL and points to writable storage for a pointer.
unsafe fn make_engine(
    model: std::result::Result<Model, Error>,
    backend: Option<&str>,
    precision: Option<&str>,
    out: *mut *mut DgateEngine,
) -> Outcome {
    let choice = match backend {
        None => BackendChoice::Auto,
        Some(s) => BackendChoice::parse(s).ok_or_else(|| {
            invalid(format!(
                "backend {s:?} is not one of \"auto\", \"cpu\", \"cuda\""
            ))
        })?,
    };
    let precision = match precision {
        None => Precision::F32,
        Some(s) => Precision::parse(s)
            .ok_or_else(|| invalid(format!("precision {s:?} is not one of \"f32\", \"f16\"")))?,
    };
    let engine = Engine::new(model?, choice, precision)?;
    let token = NEXT_TOKEN.fetch_add(16, Ordering::Relaxed);
    registry().insert(token, Arc::new(Mutex::new(engine)));
    *out = std::ptr::without_provenance_mut(token);
    Ok(())
}

/// The library's version, e.g. `"0.1.0"`; a static string.
#[no_mangle]
pub extern "C" fn dgate_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// The message of the last failed `dgate_` call on this thread; `""` after a success.
/// Never NULL; valid until the next `dgate_` call on this thread.
#[no_mangle]
pub extern "C" fn dgate_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Loads a safetensors file and creates an engine. `backend` is `"auto"`, `"cpu"` or
/// `"cuda"` (NULL: auto); `precision` `"f32"` or `"f16"` (NULL: f32).
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or points to writable
/// storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn dgate_create(
    weights_path: *const c_char,
    backend: *const c_char,
    precision: *const c_char,
    out: *mut *mut DgateEngine,
) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if weights_path.is_null() {
            return Err(null("weights_path"));
        }
        let path = path_from_c(CStr::from_ptr(weights_path));
        make_engine(
            Model::load(path),
            opt_str(backend, "backend")?,
            opt_str(precision, "precision")?,
            out,
        )
    })
}

#[cfg(unix)]
fn path_from_c(s: &CStr) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(s.to_bytes()).into()
}

#[cfg(not(unix))]
fn path_from_c(s: &CStr) -> std::path::PathBuf {
    s.to_string_lossy().into_owned().into()
}

/// Like [`dgate_create`], from a safetensors image in memory (`len` bytes at `bytes`,
/// copied; the caller may free them afterwards).
///
/// # Safety
/// `bytes` is NULL or points to `len` readable bytes; otherwise as [`dgate_create`].
#[no_mangle]
pub unsafe extern "C" fn dgate_create_from_memory(
    bytes: *const c_void,
    len: usize,
    backend: *const c_char,
    precision: *const c_char,
    out: *mut *mut DgateEngine,
) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if bytes.is_null() {
            return Err(null("bytes"));
        }
        let image = std::slice::from_raw_parts(bytes.cast::<u8>(), len);
        make_engine(
            Model::from_bytes(image, "<weights in memory>"),
            opt_str(backend, "backend")?,
            opt_str(precision, "precision")?,
            out,
        )
    })
}

/// Destroys an engine. NULL is a no-op (`DGATE_OK`); a handle already destroyed is
/// `DGATE_ERR_INVALID_HANDLE`.
///
/// # Safety
/// None beyond the C signature: the handle is only looked up, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn dgate_destroy(engine: *mut DgateEngine) -> Status {
    guard(|| {
        if engine.is_null() {
            return Ok(());
        }
        let removed = registry().remove(&(engine as usize));
        match removed {
            // Dropped here unless another thread is running it; then when that run ends.
            Some(slot) => {
                drop(slot);
                Ok(())
            }
            None => Err(Fail(
                Status::InvalidHandle,
                format!("engine handle {engine:p} is not live (already destroyed?)"),
            )),
        }
    })
}

/// Writes the number of classes to `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `int32_t`.
#[no_mangle]
pub unsafe extern "C" fn dgate_num_classes(engine: *const DgateEngine, out: *mut i32) -> Status {
    guard(|| {
        let n = with_engine(engine, |e| Ok(e.num_classes()))?;
        write_count(n, out)
    })
}

/// Writes the number of gates to `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `int32_t`.
#[no_mangle]
pub unsafe extern "C" fn dgate_num_gates(engine: *const DgateEngine, out: *mut i32) -> Status {
    guard(|| {
        let n = with_engine(engine, |e| Ok(e.num_gates()))?;
        write_count(n, out)
    })
}

unsafe fn write_count(n: usize, out: *mut i32) -> Outcome {
    if out.is_null() {
        return Err(null("out"));
    }
    check_aligned(out, "out")?;
    *out = i32::try_from(n).map_err(|_| Fail(Status::Internal, format!("{n} overflows int32")))?;
    Ok(())
}

/// Writes the input normalisation (`x = (p/255 − mean)/std`, per R, G, B channel) to
/// `mean[0..3]` and `std[0..3]`.
///
/// # Safety
/// `mean` and `std` are NULL or point to 3 writable floats each.
#[no_mangle]
pub unsafe extern "C" fn dgate_normalization(
    engine: *const DgateEngine,
    mean: *mut f32,
    std: *mut f32,
) -> Status {
    guard(|| {
        let norm = with_engine(engine, |e| Ok(e.model.normalize))?;
        if mean.is_null() {
            return Err(null("mean"));
        }
        if std.is_null() {
            return Err(null("std"));
        }
        check_aligned(mean, "mean")?;
        check_aligned(std, "std")?;
        for c in 0..3 {
            mean.add(c).write(norm.mean[c]);
            std.add(c).write(norm.std[c]);
        }
        Ok(())
    })
}

/// Sets one threshold per gate (`count` must equal the number of gates; NaN is
/// rejected). On failure the thresholds are unchanged.
///
/// # Safety
/// `thresholds` is NULL or points to `count` readable floats.
#[no_mangle]
pub unsafe extern "C" fn dgate_set_thresholds(
    engine: *mut DgateEngine,
    thresholds: *const f32,
    count: usize,
) -> Status {
    guard(|| {
        with_engine(engine, |e| {
            let t: &[f32] = if count == 0 {
                &[]
            } else {
                if thresholds.is_null() {
                    return Err(null("thresholds"));
                }
                check_aligned(thresholds, "thresholds")?;
                std::slice::from_raw_parts(thresholds, count)
            };
            Ok(e.set_thresholds(t)?)
        })
    })
}

/// Copies the current thresholds to `out`; `count` must equal the number of gates.
///
/// # Safety
/// `out` is NULL or points to `count` writable floats.
#[no_mangle]
pub unsafe extern "C" fn dgate_get_thresholds(
    engine: *const DgateEngine,
    out: *mut f32,
    count: usize,
) -> Status {
    guard(|| {
        let t = with_engine(engine, |e| Ok(e.thresholds()))?;
        if count != t.len() {
            return Err(invalid(format!(
                "count is {count} but the model has {} gate(s)",
                t.len()
            )));
        }
        if count > 0 {
            if out.is_null() {
                return Err(null("out"));
            }
            check_aligned(out, "out")?;
            for (i, v) in t.iter().enumerate() {
                out.add(i).write(*v);
            }
        }
        Ok(())
    })
}

/// Writes the backend's name (e.g. `"cpu (2 threads)"`), NUL-terminated, into `buf`
/// of `capacity` bytes; too small a buffer is `DGATE_ERR_INVALID_ARGUMENT` and the
/// message says how many bytes are needed.
///
/// # Safety
/// `buf` is NULL or points to `capacity` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dgate_backend_name(
    engine: *const DgateEngine,
    buf: *mut c_char,
    capacity: usize,
) -> Status {
    guard(|| {
        let name = with_engine(engine, |e| Ok(e.backend_name()))?;
        if buf.is_null() {
            return Err(null("buf"));
        }
        let bytes = name.as_bytes();
        if capacity < bytes.len() + 1 {
            return Err(invalid(format!(
                "capacity {capacity} is too small: the name needs {} bytes",
                bytes.len() + 1
            )));
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
        Ok(())
    })
}

/// Where a run writes its results.
struct Outputs {
    classes: *mut i32,
    exits: *mut i32,
    scores: *mut f32,
    logits: *mut f32,
    logits_len: usize,
}

impl Outputs {
    /// Checks the output pointers for `n` samples of `classes` classes.
    fn check(&self, n: usize, classes: usize) -> Outcome {
        if self.classes.is_null() {
            return Err(null("classes"));
        }
        if self.exits.is_null() {
            return Err(null("exits"));
        }
        if self.scores.is_null() {
            return Err(null("scores"));
        }
        check_aligned(self.classes, "classes")?;
        check_aligned(self.exits, "exits")?;
        check_aligned(self.scores, "scores")?;
        if !self.logits.is_null() {
            check_aligned(self.logits, "logits")?;
            let need = n.saturating_mul(classes);
            if self.logits_len < need {
                return Err(invalid(format!(
                    "logits_len is {} but {n} samples × {classes} classes need {need}",
                    self.logits_len
                )));
            }
        }
        Ok(())
    }

    /// Writes results element by element through the raw pointers, so that overlapping
    /// caller buffers never become aliasing Rust slices.
    ///
    /// # Safety
    /// [`Outputs::check`] passed for `results.len()` samples of `classes` classes, and
    /// the buffers are as long as the caller promised.
    unsafe fn write(&self, results: &[SampleResult], classes: usize) -> Outcome {
        for (i, r) in results.iter().enumerate() {
            let class = i32::try_from(r.class).unwrap_or(i32::MAX);
            let exit = r.exit.map_or(-1, |g| i32::try_from(g).unwrap_or(i32::MAX));
            self.classes.add(i).write(class);
            self.exits.add(i).write(exit);
            self.scores.add(i).write(r.score);
            if !self.logits.is_null() {
                if r.logits.len() != classes {
                    return Err(Fail(
                        Status::Internal,
                        format!(
                            "sample {i} has {} logits, expected {classes}",
                            r.logits.len()
                        ),
                    ));
                }
                let dst = self.logits.add(i * classes);
                std::ptr::copy_nonoverlapping(r.logits.as_ptr(), dst, classes);
            }
        }
        Ok(())
    }
}

/// Shared body of the two run functions.
///
/// # Safety
/// `input` is NULL or points to `input_len` readable elements; outputs as documented.
unsafe fn run_batch<T>(
    engine: *mut DgateEngine,
    input: *const T,
    input_len: usize,
    n: usize,
    out: Outputs,
    run: impl FnOnce(&mut Engine, &[T], usize) -> crate::Result<Vec<SampleResult>>,
) -> Outcome {
    with_engine(engine, |e| {
        let need = n.checked_mul(IMAGE);
        if need != Some(input_len) {
            return Err(invalid(format!(
                "input_len is {input_len} but n = {n} images need {}",
                need.map_or("more than SIZE_MAX".into(), |v| v.to_string())
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let classes = e.num_classes();
        out.check(n, classes)?;
        if input.is_null() {
            return Err(null("input"));
        }
        check_aligned(input, "input")?;
        let images = std::slice::from_raw_parts(input, input_len);
        let results = run(e, images, n)?;
        if results.len() != n {
            return Err(Fail(
                Status::Internal,
                format!(
                    "the backend returned {} results for {n} images",
                    results.len()
                ),
            ));
        }
        out.write(&results, classes)
    })
}

/// Classifies `n` raw CIFAR-style images (`pixels`: `n × 3 × 32 × 32` bytes, each image
/// its R, G, B 32×32 planes; `pixels_len` must equal `n × 3072`), applying the model's
/// normalisation. Writes per sample, in input order: `classes[i]`, `exits[i]` (gate index
/// from 0, or -1 for the head), `scores[i]` and, when `logits` is not NULL, `classes`
/// scores at `logits[i × classes ..]` (`logits_len` ≥ `n × classes`). `n = 0` is a
/// no-op that touches no buffer (`pixels_len` must then be 0). On failure the output buffers' contents are unspecified.
///
/// # Safety
/// Each non-NULL pointer points to as many elements as stated: `pixels_len` bytes,
/// `n` elements of `classes`, `exits`, `scores`, `logits_len` floats of `logits`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dgate_run_u8(
    engine: *mut DgateEngine,
    pixels: *const u8,
    pixels_len: usize,
    n: usize,
    classes: *mut i32,
    exits: *mut i32,
    scores: *mut f32,
    logits: *mut f32,
    logits_len: usize,
) -> Status {
    guard(|| {
        let out = Outputs {
            classes,
            exits,
            scores,
            logits,
            logits_len,
        };
        run_batch(engine, pixels, pixels_len, n, out, |e, x, n| e.run_u8(x, n))
    })
}

/// As [`dgate_run_u8`], for `n` images already normalised: `images` is
/// `n × 3 × 32 × 32` floats (NCHW, RGB), `images_len` must equal `n × 3072`.
///
/// # Safety
/// As [`dgate_run_u8`], with `images_len` readable floats at `images`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dgate_run_f32(
    engine: *mut DgateEngine,
    images: *const f32,
    images_len: usize,
    n: usize,
    classes: *mut i32,
    exits: *mut i32,
    scores: *mut f32,
    logits: *mut f32,
    logits_len: usize,
) -> Status {
    guard(|| {
        let out = Outputs {
            classes,
            exits,
            scores,
            logits,
            logits_len,
        };
        run_batch(engine, images, images_len, n, out, |e, x, n| e.run(x, n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: dgate_last_error never returns NULL and the string lives until the next call.
        unsafe { CStr::from_ptr(dgate_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_status_with_its_message() {
        let status = guard(|| panic!("boom in a test"));
        assert_eq!(status, Status::Internal);
        assert!(last_error().contains("boom in a test"), "{}", last_error());
        assert_eq!(guard(|| Ok(())), Status::Ok);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn errors_map_to_statuses() {
        let s = |e: Error| Fail::from(e).0;
        assert_eq!(s(Error::Config("x".into())), Status::InvalidArgument);
        assert_eq!(
            s(Error::CudaUnavailable("x".into())),
            Status::CudaUnavailable
        );
        assert_eq!(s(Error::Cuda("x".into())), Status::Backend);
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(s(Error::io("w.safetensors", io)), Status::Load);
    }

    #[test]
    fn a_poisoned_engine_is_reported_not_reused() {
        let model = crate::model::Model::from_weights(
            &crate::zoo::random("resnet20", 0).expect("random resnet20"),
        )
        .expect("model");
        let engine = Engine::new(model, BackendChoice::Cpu, Precision::F32).expect("engine");
        let token = NEXT_TOKEN.fetch_add(16, Ordering::Relaxed);
        let slot = Arc::new(Mutex::new(engine));
        registry().insert(token, Arc::clone(&slot));
        let h: *mut DgateEngine = std::ptr::without_provenance_mut(token);
        let _ = std::thread::spawn(move || {
            let _guard = slot.lock();
            panic!("poison the engine");
        })
        .join();
        let mut classes = 0;
        assert_eq!(
            unsafe { dgate_num_classes(h, &mut classes) },
            Status::Internal
        );
        assert_eq!(unsafe { dgate_destroy(h) }, Status::Ok);
        assert_eq!(unsafe { dgate_destroy(h) }, Status::InvalidHandle);
    }
}
