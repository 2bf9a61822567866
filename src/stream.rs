//! CUDA streams: running a session's tensor work on a stream its caller owns.
//!
//! A trainer that trains on a CUDA stream of its own wants moth's kernels
//! (inversion, stamping, its own model's forward passes called from moth) on
//! that stream too, and its own current stream untouched afterwards. libtorch
//! keeps one *current* stream per device and thread, and every kernel goes to
//! it. So there are two ways to get moth onto a stream:
//!
//! - make the stream current on the calling thread before calling moth (a C++
//!   trainer's `c10::cuda::CUDAStreamGuard`): moth runs on the caller's
//!   thread and needs nothing more;
//! - hand moth the stream once ([`CudaStream`],
//!   [`Session::set_cuda_stream`](crate::session::Session::set_cuda_stream)):
//!   each hardening call makes it current (and its device the current device)
//!   for the duration of the call, then restores exactly what was current
//!   before, on success and on error alike.
//!
//! tch has no stream API. libtorch's CUDA library, however, exports a small C
//! interface (the one its ahead-of-time compiled models use) with a stream
//! guard built from a raw `cudaStream_t`; moth looks those functions up at
//! run time once CUDA is loaded ([`crate::device::ensure_cuda_loaded`]), so
//! the same `libmoth.so` works with CPU-only and CUDA libtorch alike.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::{Error, Result};

/// `aoti_torch_create_cuda_stream_guard(stream, device, out_guard)`.
type CreateGuardFn = unsafe extern "C" fn(*mut c_void, i32, *mut *mut c_void) -> i32;
/// `aoti_torch_delete_cuda_stream_guard(guard)`.
type DeleteGuardFn = unsafe extern "C" fn(*mut c_void) -> i32;
/// `aoti_torch_get_current_cuda_stream(device, out_stream)`.
type CurrentFn = unsafe extern "C" fn(i32, *mut *mut c_void) -> i32;

/// The functions a stream scope needs, as libtorch exports them (status 0 is
/// success). Kept as a table so that tests can drive the scope logic on
/// machines without CUDA.
#[derive(Clone, Copy)]
pub(crate) struct StreamApi {
    /// Makes `(stream, device)` current; writes a guard that restores the
    /// previous stream and device when deleted.
    pub create_guard: CreateGuardFn,
    /// Restores what was current when the guard was made, and frees it.
    pub delete_guard: DeleteGuardFn,
    /// The current stream of a device on this thread.
    pub current: CurrentFn,
    /// CUDA devices usable by this process.
    pub device_count: fn() -> usize,
    /// Where tensors that run on a stream of device `i` live.
    pub tensor_device: fn(usize) -> tch::Device,
}

impl fmt::Debug for StreamApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamApi")
    }
}

const CREATE_GUARD: &CStr = c"aoti_torch_create_cuda_stream_guard";
const DELETE_GUARD: &CStr = c"aoti_torch_delete_cuda_stream_guard";
const CURRENT: &CStr = c"aoti_torch_get_current_cuda_stream";

static CUDA_API: OnceLock<std::result::Result<StreamApi, String>> = OnceLock::new();

/// libtorch's CUDA stream functions, or why they cannot be used here.
fn cuda_api() -> Result<&'static StreamApi> {
    CUDA_API
        .get_or_init(resolve_cuda_api)
        .as_ref()
        .map_err(|why| Error::Unsupported(format!("CUDA streams: {why}")))
}

fn resolve_cuda_api() -> std::result::Result<StreamApi, String> {
    crate::device::ensure_cuda_loaded()?;
    if crate::device::cuda_device_count() == 0 {
        return Err("CUDA is loaded but no GPU is visible to this process".into());
    }
    // SAFETY: the three symbols, when present, have the C signatures declared
    // in libtorch's `torch/csrc/inductor/aoti_torch/c/shim.h`, which match
    // the function-pointer types of `StreamApi`.
    unsafe {
        Ok(StreamApi {
            create_guard: std::mem::transmute::<*mut c_void, CreateGuardFn>(lookup(CREATE_GUARD)?),
            delete_guard: std::mem::transmute::<*mut c_void, DeleteGuardFn>(lookup(DELETE_GUARD)?),
            current: std::mem::transmute::<*mut c_void, CurrentFn>(lookup(CURRENT)?),
            device_count: crate::device::cuda_device_count,
            tensor_device: tch::Device::Cuda,
        })
    }
}

/// Finds `name` among the libraries loaded globally into the process.
fn lookup(name: &CStr) -> std::result::Result<*mut c_void, String> {
    // SAFETY: RTLD_DEFAULT searches the global scope; `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() {
        Err(format!(
            "the loaded libtorch does not export {} (libtorch too old?)",
            name.to_string_lossy()
        ))
    } else {
        Ok(p)
    }
}

/// A CUDA stream created outside moth (a `cudaStream_t`), on one device.
///
/// moth neither owns nor checks the stream: the caller keeps it alive for as
/// long as a session may use it. Tensors produced on it (the hardened batch)
/// are ready in stream order: code on the same stream may use them at once,
/// code on another stream must wait for it (an event) first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CudaStream {
    /// libtorch's index of the device, checked against the device count
    /// when the stream was made.
    device: i32,
    handle: usize,
    api: &'static StreamApi,
}

impl fmt::Debug for CudaStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaStream(cuda:{}, {:#x})", self.device, self.handle)
    }
}

impl PartialEq for StreamApi {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for StreamApi {}

impl CudaStream {
    /// Wraps the `cudaStream_t` `stream`, created on CUDA device `device`.
    ///
    /// Fails with [`Error::Unsupported`] when this process has no CUDA (a
    /// CPU-only libtorch or machine), and with [`Error::Device`] for a device
    /// index that does not exist or a handle that cannot be a stream (NULL,
    /// the special handles `cudaStreamLegacy` and `cudaStreamPerThread`, or a
    /// misaligned value).
    pub fn external(device: usize, stream: *mut c_void) -> Result<Self> {
        Self::with_api(cuda_api()?, device, stream)
    }

    pub(crate) fn with_api(
        api: &'static StreamApi,
        device: usize,
        stream: *mut c_void,
    ) -> Result<Self> {
        let device = device_index(api, device)?;
        let handle = stream as usize;
        match handle {
            0 => Err(Error::Device(
                "a NULL cudaStream_t names the legacy default stream, which moth does not \
                 use implicitly; pass the stream your trainer runs on"
                    .into(),
            )),
            1 | 2 => Err(Error::Device(format!(
                "{handle:#x} is cudaStreamLegacy or cudaStreamPerThread, not a stream of \
                 your own; pass the stream your trainer runs on"
            ))),
            h if h % 8 != 0 => Err(Error::Device(format!(
                "{h:#x} is not a cudaStream_t (a stream handle is an aligned pointer)"
            ))),
            _ => Ok(CudaStream {
                device,
                handle,
                api,
            }),
        }
    }

    /// The calling thread's current stream on CUDA device `device`.
    pub fn current(device: usize) -> Result<Self> {
        Self::current_with_api(cuda_api()?, device)
    }

    pub(crate) fn current_with_api(api: &'static StreamApi, device: usize) -> Result<Self> {
        let device = device_index(api, device)?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; the device index was checked.
        let status = unsafe { (api.current)(device, &mut handle) };
        if status != 0 {
            return Err(Error::Device(format!(
                "libtorch could not read the current stream of cuda:{device}"
            )));
        }
        Ok(CudaStream {
            device,
            handle: handle as usize,
            api,
        })
    }

    /// The CUDA device index.
    pub fn device(&self) -> usize {
        self.device as usize
    }

    /// The `cudaStream_t`.
    pub fn handle(&self) -> *mut c_void {
        self.handle as *mut c_void
    }

    /// The tch device whose tensors this stream runs (`cuda:N`).
    pub fn tensor_device(&self) -> tch::Device {
        (self.api.tensor_device)(self.device())
    }

    /// Makes this stream and its device current on the calling thread until
    /// the returned scope is dropped, which restores what was current before.
    pub fn enter(&self) -> Result<StreamScope> {
        let mut guard: *mut c_void = std::ptr::null_mut();
        // SAFETY: the handle and the device index were vetted when the stream
        // was made (`with_api`/`current_with_api`); `guard` is a valid
        // out-pointer.
        let status = unsafe { (self.api.create_guard)(self.handle(), self.device, &mut guard) };
        if status != 0 || guard.is_null() {
            return Err(Error::Device(format!(
                "libtorch refused to make {self:?} current"
            )));
        }
        Ok(StreamScope {
            guard,
            api: self.api,
            _not_send: PhantomData,
        })
    }
}

/// libtorch's index of CUDA device `device`, if this process has it.
fn device_index(api: &StreamApi, device: usize) -> Result<i32> {
    let count = (api.device_count)();
    match i32::try_from(device) {
        Ok(i) if device < count => Ok(i),
        _ => Err(Error::Device(format!(
            "CUDA stream on cuda:{device}, but this process sees {count} CUDA device(s)"
        ))),
    }
}

/// While alive, a [`CudaStream`] is the current stream of the thread that
/// entered it. Dropping it restores the previous stream and device. It stays
/// on its thread because libtorch's current streams are per thread.
pub struct StreamScope {
    guard: *mut c_void,
    api: &'static StreamApi,
    _not_send: PhantomData<*mut ()>,
}

impl fmt::Debug for StreamScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamScope")
    }
}

impl Drop for StreamScope {
    fn drop(&mut self) {
        // SAFETY: `guard` came from `create_guard` and is deleted exactly once.
        let status = unsafe { (self.api.delete_guard)(self.guard) };
        if status != 0 {
            log::error!("libtorch failed to restore the caller's CUDA stream");
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A stand-in for libtorch's CUDA stream functions: one thread-local
    //! "current stream" per fake device, and a count of live guards. It lets
    //! the scope logic be tested on machines without a GPU.
    use super::*;
    use std::cell::{Cell, RefCell};

    pub const DEVICES: usize = 2;

    thread_local! {
        static CURRENT: RefCell<[usize; DEVICES]> = const { RefCell::new([0; DEVICES]) };
        static CURRENT_DEVICE: Cell<i32> = const { Cell::new(0) };
        static LIVE_GUARDS: Cell<usize> = const { Cell::new(0) };
    }

    struct Guard {
        device: i32,
        previous_stream: usize,
        previous_device: i32,
    }

    unsafe extern "C" fn create(stream: *mut c_void, device: i32, out: *mut *mut c_void) -> i32 {
        let previous_stream = CURRENT.with(|c| c.borrow()[device as usize]);
        let previous_device = CURRENT_DEVICE.with(|d| d.replace(device));
        CURRENT.with(|c| c.borrow_mut()[device as usize] = stream as usize);
        LIVE_GUARDS.with(|n| n.set(n.get() + 1));
        let g = Box::new(Guard {
            device,
            previous_stream,
            previous_device,
        });
        // SAFETY: the caller passes a valid out-pointer.
        unsafe { *out = Box::into_raw(g).cast() };
        0
    }

    unsafe extern "C" fn delete(guard: *mut c_void) -> i32 {
        // SAFETY: `guard` came from `create`.
        let g = unsafe { Box::from_raw(guard.cast::<Guard>()) };
        CURRENT.with(|c| c.borrow_mut()[g.device as usize] = g.previous_stream);
        CURRENT_DEVICE.with(|d| d.set(g.previous_device));
        LIVE_GUARDS.with(|n| n.set(n.get() - 1));
        0
    }

    unsafe extern "C" fn current(device: i32, out: *mut *mut c_void) -> i32 {
        // SAFETY: the caller passes a valid out-pointer.
        unsafe { *out = CURRENT.with(|c| c.borrow()[device as usize]) as *mut c_void };
        0
    }

    fn count() -> usize {
        DEVICES
    }

    /// The fake devices' tensors are ordinary CPU tensors.
    fn cpu(_: usize) -> tch::Device {
        tch::Device::Cpu
    }

    pub static API: StreamApi = StreamApi {
        create_guard: create,
        delete_guard: delete,
        current,
        device_count: count,
        tensor_device: cpu,
    };

    /// This thread's fake current stream of `device`.
    pub fn current_stream(device: usize) -> usize {
        CURRENT.with(|c| c.borrow()[device])
    }

    /// This thread's fake current device.
    pub fn current_device() -> i32 {
        CURRENT_DEVICE.with(|d| d.get())
    }

    /// Scopes not yet restored on this thread.
    pub fn live_guards() -> usize {
        LIVE_GUARDS.with(|n| n.get())
    }

    /// Makes `stream` current on `device` the way a trainer's own guard would.
    pub fn set_current(device: usize, stream: usize) {
        CURRENT.with(|c| c.borrow_mut()[device] = stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_makes_the_stream_current_and_restores_the_previous_one() {
        fake::set_current(1, 0x1000);
        let s = CudaStream::with_api(&fake::API, 1, 0x2000 as *mut c_void).unwrap();
        {
            let _scope = s.enter().unwrap();
            assert_eq!(fake::current_stream(1), 0x2000);
            assert_eq!(fake::current_device(), 1);
            let seen = CudaStream::current_with_api(&fake::API, 1).unwrap();
            assert_eq!(seen.handle() as usize, 0x2000);
            {
                let inner = CudaStream::with_api(&fake::API, 1, 0x3000 as *mut c_void).unwrap();
                let _nested = inner.enter().unwrap();
                assert_eq!(fake::current_stream(1), 0x3000);
            }
            assert_eq!(fake::current_stream(1), 0x2000);
        }
        assert_eq!(fake::current_stream(1), 0x1000);
        assert_eq!(fake::current_device(), 0);
        assert_eq!(fake::live_guards(), 0);
    }

    #[test]
    fn handles_that_are_not_streams_are_refused() {
        for (device, handle, needle) in [
            (0, 0usize, "NULL"),
            (0, 1, "cudaStreamLegacy"),
            (0, 2, "cudaStreamPerThread"),
            (0, 0x1003, "aligned"),
            (fake::DEVICES, 0x1000, "sees 2 CUDA device(s)"),
        ] {
            let e = CudaStream::with_api(&fake::API, device, handle as *mut c_void).unwrap_err();
            assert!(matches!(e, Error::Device(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(CudaStream::current_with_api(&fake::API, 7).is_err());
    }

    /// moth finds its stream functions by name at run time; this fails at
    /// once, on any machine, if a libtorch upgrade renames or drops them.
    #[test]
    fn the_libtorch_in_use_exports_the_stream_functions() {
        let dir = crate::device::libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
        let lib = dir.join("libtorch_cuda.so");
        assert!(lib.exists(), "{} is missing", lib.display());
        let out = std::process::Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&lib)
            .output()
            .expect("nm (binutils) runs");
        let symbols = String::from_utf8_lossy(&out.stdout);
        for name in [CREATE_GUARD, DELETE_GUARD, CURRENT] {
            let name = name.to_str().unwrap();
            assert!(
                symbols.lines().any(|l| l.ends_with(&format!(" T {name}"))),
                "{} does not export {name}",
                lib.display()
            );
        }
    }

    /// The parameter order of these functions has changed between libtorch
    /// releases; the declarations in the headers of the libtorch in use must
    /// match the types in `StreamApi`.
    #[test]
    fn the_libtorch_headers_declare_the_signatures_moth_calls() {
        let dir = crate::device::libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
        let header = dir.join("../include/torch/csrc/inductor/aoti_torch/c/shim.h");
        let text = std::fs::read_to_string(&header).expect("libtorch's AOTI shim header");
        let flat: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for decl in [
            "aoti_torch_create_cuda_stream_guard( void* stream, int32_t device_index, \
             CUDAStreamGuardHandle* ret_guard )",
            "aoti_torch_delete_cuda_stream_guard(CUDAStreamGuardHandle guard)",
            "aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream)",
        ] {
            assert!(
                flat.contains(decl),
                "{} does not declare {decl}",
                header.display()
            );
        }
    }

    #[test]
    fn without_cuda_streams_are_unsupported_with_a_reason() {
        if crate::device::cuda_device_count() > 0 {
            return; // this check is about CPU-only machines
        }
        let e = CudaStream::external(0, 0x1000 as *mut c_void).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("CUDA"), "{e}");
        assert!(CudaStream::current(0).is_err());
    }
}

#[cfg(test)]
mod session_tests {
    //! The session side: every hardening call runs on the session's stream,
    //! including the caller's own forward passes, and leaves the caller's
    //! stream as it found it.
    use super::*;
    use crate::config::InversionBudget;
    use crate::model::Classifier;
    use crate::session::{Session, SessionConfig, SessionSpec};
    use std::cell::RefCell;
    use tch::{Device, Kind, Tensor};

    const STREAM: usize = 0x7000;
    const CALLER: usize = 0x5000;

    /// A linear 3-class model that notes the fake current stream of device 1
    /// at every forward pass.
    struct Recording {
        w: Tensor,
        seen: RefCell<Vec<usize>>,
    }

    impl Classifier for Recording {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            self.seen.borrow_mut().push(fake::current_stream(1));
            Ok(x.f_flatten(1, -1)?.f_matmul(&self.w.tr())?)
        }
        fn set_train(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    /// Values in `[-1, 1)` from a generator of the test's own: libtorch's
    /// global one is shared with tests on other threads (and reseeded by
    /// every session step), so two draws could differ.
    fn values(len: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        Tensor::from_slice(&v)
    }

    fn model() -> Recording {
        Recording {
            w: values(48, 3).view([3, 16]),
            seen: RefCell::new(Vec::new()),
        }
    }

    fn session() -> Session {
        let mut cfg = SessionConfig {
            accuracy_every: 0,
            portion: 0.5,
            ..SessionConfig::default()
        };
        cfg.warmup.budget = InversionBudget {
            steps: 3,
            ..cfg.warmup.budget
        };
        let spec = SessionSpec {
            num_classes: 3,
            input_shape: [1, 4, 4],
        };
        Session::new(cfg, spec).unwrap()
    }

    fn batch() -> (Tensor, Tensor) {
        let x = (values(192, 4).view([12, 1, 4, 4]) + 1.0) / 2.0;
        let y = Tensor::arange(12, (Kind::Int64, Device::Cpu)).remainder(3);
        (x, y)
    }

    #[test]
    fn hardening_runs_on_the_session_stream_and_restores_the_callers() {
        let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
        let (x, y) = batch();
        let mut plain = session();
        let mut bound = session();
        bound.set_cuda_stream(Some(stream));
        assert_eq!(bound.cuda_stream(), Some(stream));
        fake::set_current(1, CALLER);

        let mut m = model();
        let a = plain.harden_batch(&mut m, &x, &y).unwrap();
        assert!(m.seen.borrow().iter().all(|&s| s == CALLER));

        let mut m = model();
        let b = bound.harden_batch(&mut m, &x, &y).unwrap();
        let seen = m.seen.borrow();
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|&s| s == STREAM), "{seen:x?}");
        assert_eq!(fake::current_stream(1), CALLER);
        assert_eq!(fake::current_device(), 0);
        assert_eq!(fake::live_guards(), 0);
        // The stream changes where work runs, never what it computes.
        assert!(a.inputs.equal(&b.inputs));
        assert_eq!(plain.step(), bound.step());
    }

    #[test]
    fn a_failed_call_restores_the_callers_stream_and_keeps_the_state() {
        let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
        let mut s = session();
        s.set_cuda_stream(Some(stream));
        fake::set_current(1, CALLER);
        let (x, _) = batch();
        let bad = Tensor::full([12], 9, (Kind::Int64, Device::Cpu));
        let e = s.harden_batch(&mut model(), &x, &bad).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert_eq!(fake::current_stream(1), CALLER);
        assert_eq!(fake::live_guards(), 0);
        assert_eq!(s.step(), 0);
    }

    #[test]
    fn a_model_on_another_device_is_refused_before_any_work() {
        struct Elsewhere;
        impl Classifier for Elsewhere {
            fn forward(&self, _: &Tensor) -> Result<Tensor> {
                panic!("must not run")
            }
            fn set_train(&mut self, _: bool) -> Result<()> {
                Ok(())
            }
            fn device(&self) -> Device {
                Device::Cuda(0)
            }
        }
        let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
        let mut s = session();
        s.set_cuda_stream(Some(stream));
        let (x, y) = batch();
        let e = s.harden_batch(&mut Elsewhere, &x, &y).unwrap_err();
        assert!(matches!(e, Error::Device(_)), "{e:?}");
        assert!(e.to_string().contains("clear the session's stream"), "{e}");
        assert_eq!(fake::live_guards(), 0);
        s.set_cuda_stream(None);
        assert_eq!(s.cuda_stream(), None);
    }
}
