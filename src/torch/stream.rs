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
//! run time once CUDA is loaded ([`crate::torch::device::ensure_cuda_loaded`]), so
//! the same `libmoth.so` works with CPU-only and CUDA libtorch alike.

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::torch::sys::StreamApi;
use crate::{Error, Result};

static CUDA_API: OnceLock<std::result::Result<StreamApi, String>> = OnceLock::new();

/// libtorch's CUDA stream functions, or why they cannot be used here.
fn cuda_api() -> Result<&'static StreamApi> {
    CUDA_API
        .get_or_init(resolve_cuda_api)
        .as_ref()
        .map_err(|why| Error::Unsupported(format!("CUDA streams: {why}")))
}

fn resolve_cuda_api() -> std::result::Result<StreamApi, String> {
    crate::torch::device::ensure_cuda_loaded()?;
    if crate::torch::device::cuda_device_count() == 0 {
        return Err("CUDA is loaded but no GPU is visible to this process".into());
    }
    StreamApi::from_libtorch(crate::torch::device::cuda_device_count, tch::Device::Cuda)
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
        let Some(handle) = api.current(device) else {
            return Err(Error::Device(format!(
                "libtorch could not read the current stream of cuda:{device}"
            )));
        };
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
        self.api.tensor_device(self.device())
    }

    /// Makes this stream and its device current on the calling thread until
    /// the returned scope is dropped, which restores what was current before.
    pub fn enter(&self) -> Result<StreamScope> {
        // The handle and the device index were vetted when the stream was
        // made (`with_api`/`current_with_api`).
        let Some(guard) = self.api.create_guard(self.handle(), self.device) else {
            return Err(Error::Device(format!(
                "libtorch refused to make {self:?} current"
            )));
        };
        Ok(StreamScope {
            guard,
            api: self.api,
            _not_send: PhantomData,
        })
    }
}

/// libtorch's index of CUDA device `device`, if this process has it.
fn device_index(api: &StreamApi, device: usize) -> Result<i32> {
    let count = api.device_count();
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
        // `guard` came from `create_guard` and is deleted exactly once, here.
        if !self.api.delete_guard(self.guard) {
            log::error!("libtorch failed to restore the caller's CUDA stream");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::sys::{fake, CREATE_GUARD, CURRENT, DELETE_GUARD};

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
        let dir = crate::torch::device::libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
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
        let dir = crate::torch::device::libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
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
        if crate::torch::device::cuda_device_count() > 0 {
            return; // this check is about CPU-only machines
        }
        let e = CudaStream::external(0, 0x1000 as *mut c_void).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("CUDA"), "{e}");
        assert!(CudaStream::current(0).is_err());
    }
}
