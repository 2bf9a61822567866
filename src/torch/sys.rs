//! Every call into C libraries outside the C ABI: `dlopen` (to add
//! libtorch's CUDA library to the process), `dlsym` (to find its stream
//! functions) and the calls through the function pointers found. Each
//! `unsafe` block states why it is sound; the rest of the crate calls the
//! safe functions below.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::path::Path;

/// `aoti_torch_create_cuda_stream_guard(stream, device, out_guard)`.
type CreateGuardFn = unsafe extern "C" fn(*mut c_void, i32, *mut *mut c_void) -> i32;
/// `aoti_torch_delete_cuda_stream_guard(guard)`.
type DeleteGuardFn = unsafe extern "C" fn(*mut c_void) -> i32;
/// `aoti_torch_get_current_cuda_stream(device, out_stream)`.
type CurrentFn = unsafe extern "C" fn(i32, *mut *mut c_void) -> i32;

pub(crate) const CREATE_GUARD: &CStr = c"aoti_torch_create_cuda_stream_guard";
pub(crate) const DELETE_GUARD: &CStr = c"aoti_torch_delete_cuda_stream_guard";
pub(crate) const CURRENT: &CStr = c"aoti_torch_get_current_cuda_stream";

/// Loads the shared library at `path` into the global symbol scope for the
/// life of the process (it is never closed).
pub(crate) fn dlopen_global(path: &Path) -> Result<(), String> {
    let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string; the handle is kept for the
    // life of the process on purpose.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns a thread-local C string or NULL; it is copied
    // before any other dl* call on this thread.
    let msg = unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    };
    Err(msg)
}

/// Switches libtorch's thread-local grad mode; returns the previous mode.
/// (tch keeps this function private; its `no_grad` does not restore the
/// mode when the closure panics.)
pub(crate) fn set_grad_enabled(enabled: bool) -> bool {
    // SAFETY: at_grad_set_enabled only flips a thread-local flag of
    // libtorch; it cannot fail and takes no pointers.
    unsafe { torch_sys::at_grad_set_enabled(i32::from(enabled)) != 0 }
}

/// Finds `name` among the libraries loaded globally into the process.
fn dlsym_global(name: &CStr) -> Result<*mut c_void, String> {
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

/// The functions a stream scope needs, as libtorch exports them (status 0 is
/// success). Kept as a table so that tests can drive the scope logic on
/// machines without CUDA.
#[derive(Clone, Copy)]
pub(crate) struct StreamApi {
    create_guard: CreateGuardFn,
    delete_guard: DeleteGuardFn,
    current: CurrentFn,
    device_count: fn() -> usize,
    tensor_device: fn(usize) -> tch::Device,
}

impl fmt::Debug for StreamApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamApi")
    }
}

impl PartialEq for StreamApi {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for StreamApi {}

impl StreamApi {
    /// The functions exported by the `libtorch_cuda.so` loaded in this process.
    pub(crate) fn from_libtorch(
        device_count: fn() -> usize,
        tensor_device: fn(usize) -> tch::Device,
    ) -> Result<Self, String> {
        let (create, delete, current) = (
            dlsym_global(CREATE_GUARD)?,
            dlsym_global(DELETE_GUARD)?,
            dlsym_global(CURRENT)?,
        );
        // SAFETY: the three symbols have the C signatures declared in
        // libtorch's `torch/csrc/inductor/aoti_torch/c/shim.h`, which match
        // the function-pointer types (a test checks the header).
        unsafe {
            Ok(StreamApi {
                create_guard: std::mem::transmute::<*mut c_void, CreateGuardFn>(create),
                delete_guard: std::mem::transmute::<*mut c_void, DeleteGuardFn>(delete),
                current: std::mem::transmute::<*mut c_void, CurrentFn>(current),
                device_count,
                tensor_device,
            })
        }
    }

    /// Makes `(stream, device)` current on this thread; the guard restores
    /// the previous stream and device when deleted. `None` when refused.
    /// The caller vets `stream` and `device` first.
    pub(crate) fn create_guard(&self, stream: *mut c_void, device: i32) -> Option<*mut c_void> {
        let mut guard: *mut c_void = std::ptr::null_mut();
        // SAFETY: `guard` is a valid out-pointer; the stream handle and device
        // index were checked by the caller (`CudaStream::with_api`).
        let status = unsafe { (self.create_guard)(stream, device, &mut guard) };
        (status == 0 && !guard.is_null()).then_some(guard)
    }

    /// Restores what was current when `guard` was made, and frees it.
    /// The caller deletes each guard from `create_guard` exactly once.
    pub(crate) fn delete_guard(&self, guard: *mut c_void) -> bool {
        // SAFETY: `guard` came from `create_guard` and is deleted once.
        unsafe { (self.delete_guard)(guard) == 0 }
    }

    /// The current stream of a (checked) device index on this thread.
    pub(crate) fn current(&self, device: i32) -> Option<*mut c_void> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; the device index was checked.
        let status = unsafe { (self.current)(device, &mut handle) };
        (status == 0).then_some(handle)
    }

    /// CUDA devices usable by this process.
    pub(crate) fn device_count(&self) -> usize {
        (self.device_count)()
    }

    /// Where tensors that run on a stream of device `i` live.
    pub(crate) fn tensor_device(&self, i: usize) -> tch::Device {
        (self.tensor_device)(i)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A stand-in for libtorch's CUDA stream functions: one thread-local
    //! "current stream" per fake device, and a count of live guards. It lets
    //! the scope logic be tested on machines without a GPU.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::ffi::c_void;

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
