//! `moth_tensor`: a handle owning one reference to a libtorch tensor (an
//! `at::Tensor`, which is what tch wraps), created from host buffers, from
//! CUDA device memory, or from a C++ caller's own `at::Tensor` with no copy.

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

use super::boundary::{init_out, out, Zeroable};
use super::handle::{handle, into_handle, release, Handle};
use super::status::{moth_status, FfiError, FfiResult};
use crate::torch::device::cuda_device_count;

/// Element type of a tensor: one of the `MOTH_DTYPE_*` values. An input
/// enumeration is a plain `int32_t` so that any value a caller passes is
/// checked (`MOTH_STATUS_INVALID_ARGUMENT`) instead of being undefined
/// behaviour.
pub type moth_dtype = i32;
/// 32-bit IEEE float (`float`, `torch::kFloat32`): the pixel type.
pub const MOTH_DTYPE_FLOAT32: moth_dtype = 0;
/// 64-bit IEEE float (`double`).
pub const MOTH_DTYPE_FLOAT64: moth_dtype = 1;
/// 64-bit signed integer (`int64_t`): the usual label type.
pub const MOTH_DTYPE_INT64: moth_dtype = 2;
/// 32-bit signed integer (`int32_t`).
pub const MOTH_DTYPE_INT32: moth_dtype = 3;
/// 8-bit unsigned integer (`uint8_t`).
pub const MOTH_DTYPE_UINT8: moth_dtype = 4;

/// Kind of device: one of the `MOTH_DEVICE_TYPE_*` values.
pub type moth_device_type = i32;
/// Host memory.
pub const MOTH_DEVICE_TYPE_CPU: moth_device_type = 0;
/// A CUDA GPU; `moth_device.index` selects which.
pub const MOTH_DEVICE_TYPE_CUDA: moth_device_type = 1;

/// Where a tensor or a model lives.
/// cbindgen:field-names=[type, index]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct moth_device {
    /// `MOTH_DEVICE_TYPE_CPU` or `MOTH_DEVICE_TYPE_CUDA`.
    pub type_: moth_device_type,
    /// CUDA device index (0 for the CPU).
    pub index: i32,
}

// SAFETY: plain integers.
unsafe impl Zeroable for moth_device {}

/// A tensor handle (opaque). Owns one reference to a libtorch tensor;
/// free it with `moth_tensor_free`. Thread safety: a handle may be used from
/// any thread, but not from two threads at once.
pub struct moth_tensor {
    pub(crate) tensor: Tensor,
}

impl Handle for moth_tensor {
    const TAG: u64 = u64::from_be_bytes(*b"mothTENS");
    const WHAT: &'static str = "tensor";
}

impl moth_tensor {
    /// A handle owning `tensor`.
    pub fn new(tensor: Tensor) -> Self {
        moth_tensor { tensor }
    }
}

/// The tch kind of a `moth_dtype`.
pub fn kind_of(dtype: moth_dtype) -> FfiResult<Kind> {
    Ok(match dtype {
        MOTH_DTYPE_FLOAT32 => Kind::Float,
        MOTH_DTYPE_FLOAT64 => Kind::Double,
        MOTH_DTYPE_INT64 => Kind::Int64,
        MOTH_DTYPE_INT32 => Kind::Int,
        MOTH_DTYPE_UINT8 => Kind::Uint8,
        other => {
            return Err(FfiError::invalid(format!(
                "unknown dtype {other} (expected one of the MOTH_DTYPE_* values)"
            )))
        }
    })
}

/// The `moth_dtype` of a tch kind.
pub fn dtype_of(kind: Kind) -> FfiResult<moth_dtype> {
    Ok(match kind {
        Kind::Float => MOTH_DTYPE_FLOAT32,
        Kind::Double => MOTH_DTYPE_FLOAT64,
        Kind::Int64 => MOTH_DTYPE_INT64,
        Kind::Int => MOTH_DTYPE_INT32,
        Kind::Uint8 => MOTH_DTYPE_UINT8,
        other => {
            return Err(FfiError::new(
                moth_status::WrongDtype,
                format!("tensor element type {other:?} has no moth_dtype"),
            ))
        }
    })
}

/// Resolves a `moth_device`: CUDA requires a visible CUDA device
/// (`MOTH_STATUS_UNSUPPORTED` on a machine or libtorch without CUDA).
pub fn device_of(d: moth_device) -> FfiResult<Device> {
    match d.type_ {
        MOTH_DEVICE_TYPE_CPU => Ok(Device::Cpu),
        MOTH_DEVICE_TYPE_CUDA => {
            let count = cuda_device_count();
            if d.index < 0 {
                Err(FfiError::invalid(format!(
                    "CUDA device index {} is negative",
                    d.index
                )))
            } else if count == 0 {
                Err(FfiError::new(
                    moth_status::Unsupported,
                    format!(
                        "CUDA device {} requested but CUDA is not available in this process",
                        d.index
                    ),
                ))
            } else if d.index as usize >= count {
                Err(FfiError::new(
                    moth_status::Device,
                    format!("CUDA device {} requested but only {count} exist", d.index),
                ))
            } else {
                Ok(Device::Cuda(d.index as usize))
            }
        }
        other => Err(FfiError::invalid(format!(
            "unknown device type {other} (expected MOTH_DEVICE_TYPE_CPU or MOTH_DEVICE_TYPE_CUDA)"
        ))),
    }
}

/// The `moth_device` of a tch device.
pub fn moth_device_of(d: Device) -> FfiResult<moth_device> {
    match d {
        Device::Cpu => Ok(moth_device {
            type_: MOTH_DEVICE_TYPE_CPU,
            index: 0,
        }),
        Device::Cuda(i) => Ok(moth_device {
            type_: MOTH_DEVICE_TYPE_CUDA,
            index: i as i32,
        }),
        // tch reports every device type other than the CPU, CUDA and
        // Vulkan as MPS (which a Linux libtorch never has): a meta tensor
        // too, so the message cannot name it.
        _ => Err(FfiError::new(
            moth_status::Unsupported,
            "the tensor lives neither on the CPU nor on a CUDA GPU (a meta or \
             other accelerator tensor), which moth cannot use",
        )),
    }
}

/// Checks a shape and returns it with its element count.
fn checked_shape(shape: *const i64, ndim: usize) -> FfiResult<(Vec<i64>, usize)> {
    if ndim > 64 {
        return Err(FfiError::invalid(format!("{ndim} dimensions is too many")));
    }
    let dims: Vec<i64> = if ndim == 0 {
        Vec::new()
    } else {
        if shape.is_null() {
            return Err(FfiError::null("shape"));
        }
        // SAFETY: non-NULL; the caller promises `ndim` readable values.
        unsafe { std::slice::from_raw_parts(shape, ndim) }.to_vec()
    };
    let mut numel: usize = 1;
    for &d in &dims {
        if d < 0 {
            return Err(FfiError::invalid(format!(
                "shape {dims:?} has a negative dimension"
            )));
        }
        numel = numel
            .checked_mul(d as usize)
            .ok_or_else(|| FfiError::invalid(format!("shape {dims:?} overflows")))?;
    }
    Ok((dims, numel))
}

/// Creates a tensor by copying `numel(shape) * sizeof(dtype)` bytes of host
/// memory at `data` (C order, contiguous) onto `device`. `data` may be NULL
/// only when the tensor is empty; `shape` may be NULL only when `ndim` is 0
/// (a scalar). The caller keeps ownership of `data`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_from_buffer(
    data: *const c_void,
    dtype: moth_dtype,
    shape: *const i64,
    ndim: usize,
    device: moth_device,
    out_tensor: *mut *mut moth_tensor,
) -> moth_status {
    ffi_boundary!("moth_tensor_from_buffer", {
        init_out(out_tensor);
        let o = out(out_tensor, "out_tensor")?;
        let kind = kind_of(dtype)?;
        let dev = device_of(device)?;
        let (dims, numel) = checked_shape(shape, ndim)?;
        let bytes = numel
            .checked_mul(kind.elt_size_in_bytes())
            .filter(|b| *b <= isize::MAX as usize)
            .ok_or_else(|| FfiError::invalid(format!("shape {dims:?} overflows")))?;
        let t = if bytes == 0 {
            Tensor::f_zeros(&dims, (kind, Device::Cpu))?
        } else {
            if data.is_null() {
                return Err(FfiError::null("data"));
            }
            // SAFETY: non-NULL; the caller promises `bytes` readable bytes
            // (numel(shape) elements of dtype), checked not to overflow.
            let slice = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), bytes) };
            Tensor::f_from_data_size(slice, &dims, kind)?
        };
        *o = into_handle(moth_tensor::new(t.f_to_device(dev)?));
        Ok(())
    })
}

/// Creates a tensor by copying CUDA device memory at `device_ptr`
/// (contiguous, C order, `numel(shape) * sizeof(dtype)` bytes on CUDA
/// device `device.index`) into memory moth owns on the same device, on the
/// thread's current CUDA stream. The caller keeps ownership of
/// `device_ptr`. Returns `MOTH_STATUS_UNSUPPORTED` when CUDA is not
/// available (a CPU-only machine or libtorch) and
/// `MOTH_STATUS_INVALID_ARGUMENT` for a CPU device (use
/// `moth_tensor_from_buffer`).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_from_device_ptr(
    device_ptr: *const c_void,
    dtype: moth_dtype,
    shape: *const i64,
    ndim: usize,
    device: moth_device,
    out_tensor: *mut *mut moth_tensor,
) -> moth_status {
    ffi_boundary!("moth_tensor_from_device_ptr", {
        init_out(out_tensor);
        let o = out(out_tensor, "out_tensor")?;
        let kind = kind_of(dtype)?;
        if device.type_ != MOTH_DEVICE_TYPE_CUDA {
            return Err(FfiError::invalid(
                "moth_tensor_from_device_ptr takes CUDA memory; use moth_tensor_from_buffer for host memory",
            ));
        }
        let dev = device_of(device)?;
        let (dims, numel) = checked_shape(shape, ndim)?;
        if numel == 0 {
            *o = into_handle(moth_tensor::new(Tensor::f_zeros(&dims, (kind, dev))?));
            return Ok(());
        }
        if device_ptr.is_null() {
            return Err(FfiError::null("device_ptr"));
        }
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1].max(1);
        }
        // SAFETY: the caller promises `numel` contiguous elements of `dtype`
        // on `device`, alive for this call; the blob view is copied at once
        // and dropped before returning.
        let view = unsafe { Tensor::f_from_blob(device_ptr.cast(), &dims, &strides, kind, dev)? };
        let mut owned = view.f_empty_like()?;
        owned.f_copy_(&view)?;
        drop(view);
        *o = into_handle(moth_tensor::new(owned));
        Ok(())
    })
}

/// Wraps a C++ caller's `at::Tensor` (pass `&tensor` as `at_tensor`) with no
/// data copy. Ownership: moth takes its own reference to the tensor (like
/// copying an `at::Tensor`), so the caller keeps ownership of `at_tensor`
/// and may destroy it right after this call; the handle shares storage and
/// autograd history with it. The `at::Tensor` must come from the same
/// libtorch that `libmoth.so` uses. An undefined tensor is refused.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_from_at_tensor(
    at_tensor: *mut c_void,
    out_tensor: *mut *mut moth_tensor,
) -> moth_status {
    ffi_boundary!("moth_tensor_from_at_tensor", {
        init_out(out_tensor);
        let o = out(out_tensor, "out_tensor")?;
        if at_tensor.is_null() {
            return Err(FfiError::null("at_tensor"));
        }
        // SAFETY: by the C contract `at_tensor` points to a live
        // `at::Tensor` (tch's C_tensor is `torch::Tensor*`); clone_from_ptr
        // makes a new `at::Tensor` sharing its TensorImpl and leaves the
        // caller's object alone.
        let t = unsafe { Tensor::clone_from_ptr(at_tensor.cast()) };
        if !t.defined() {
            return Err(FfiError::invalid("the at::Tensor is undefined"));
        }
        *o = into_handle(moth_tensor::new(t));
        Ok(())
    })
}

/// Returns, in `*out_at_tensor`, a pointer to the `at::Tensor` inside the
/// handle (C++: `*static_cast<at::Tensor*>(p)`), borrowed: it stays valid
/// while the handle lives and must not be deleted. Copy the `at::Tensor` to
/// keep it longer (that shares storage and autograd history).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_to_at_tensor(
    tensor: *const moth_tensor,
    out_at_tensor: *mut *mut c_void,
) -> moth_status {
    ffi_boundary!("moth_tensor_to_at_tensor", {
        init_out(out_at_tensor);
        let o = out(out_at_tensor, "out_at_tensor")?;
        let t = handle(tensor, "tensor")?;
        *o = t.tensor.as_ptr() as *mut c_void;
        Ok(())
    })
}

/// Copies the tensor's elements (C order, any device, any layout) into
/// host memory `out` of `bytes` bytes, which must hold at least
/// `numel * sizeof(dtype)` bytes (`MOTH_STATUS_BUFFER_TOO_SMALL` otherwise).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_copy_to_buffer(
    tensor: *const moth_tensor,
    out_data: *mut c_void,
    bytes: usize,
) -> moth_status {
    ffi_boundary!("moth_tensor_copy_to_buffer", {
        let t = &handle(tensor, "tensor")?.tensor;
        if out_data.is_null() {
            return Err(FfiError::null("out_data"));
        }
        let kind = t.f_kind()?;
        dtype_of(kind)?;
        let numel = t.size().iter().product::<i64>() as usize;
        let needed = numel * kind.elt_size_in_bytes();
        if bytes < needed {
            return Err(FfiError::new(
                moth_status::BufferTooSmall,
                format!("buffer of {bytes} bytes is too small: {needed} needed"),
            ));
        }
        if needed == 0 {
            return Ok(());
        }
        // SAFETY: `out_data` is non-NULL and holds `bytes >= needed`
        // writable bytes (C contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(out_data.cast::<u8>(), needed) };
        t.f_copy_data_u8(dst, numel)?;
        Ok(())
    })
}

/// Writes the number of dimensions to `*out_ndim` and, when `capacity` is
/// at least that, the sizes to `shape[0..ndim]`. Returns
/// `MOTH_STATUS_BUFFER_TOO_SMALL` (with `*out_ndim` set) when `capacity` is
/// too small; `shape` may be NULL when `capacity` is 0.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_shape(
    tensor: *const moth_tensor,
    shape: *mut i64,
    capacity: usize,
    out_ndim: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_tensor_shape", {
        init_out(out_ndim);
        let nd = out(out_ndim, "out_ndim")?;
        let t = &handle(tensor, "tensor")?.tensor;
        let dims = t.size();
        *nd = dims.len();
        if capacity < dims.len() {
            return Err(FfiError::new(
                moth_status::BufferTooSmall,
                format!(
                    "shape capacity {capacity} is too small: {} needed",
                    dims.len()
                ),
            ));
        }
        if !dims.is_empty() {
            if shape.is_null() {
                return Err(FfiError::null("shape"));
            }
            // SAFETY: `shape` holds `capacity >= dims.len()` writable values.
            unsafe { std::ptr::copy_nonoverlapping(dims.as_ptr(), shape, dims.len()) };
        }
        Ok(())
    })
}

/// Writes the tensor's element type. Tensors of types without a
/// `MOTH_DTYPE_*` value give `MOTH_STATUS_WRONG_DTYPE`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_dtype(
    tensor: *const moth_tensor,
    out_dtype: *mut moth_dtype,
) -> moth_status {
    ffi_boundary!("moth_tensor_dtype", {
        init_out(out_dtype);
        let o = out(out_dtype, "out_dtype")?;
        let t = &handle(tensor, "tensor")?.tensor;
        *o = dtype_of(t.f_kind()?)?;
        Ok(())
    })
}

/// Writes the device the tensor lives on.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_tensor_device(
    tensor: *const moth_tensor,
    out_device: *mut moth_device,
) -> moth_status {
    ffi_boundary!("moth_tensor_device", {
        init_out(out_device);
        let o = out(out_device, "out_device")?;
        let t = &handle(tensor, "tensor")?.tensor;
        *o = moth_device_of(t.device())?;
        Ok(())
    })
}

/// Frees a tensor handle (drops moth's reference; storage shared with a
/// caller's `at::Tensor` stays alive as long as that one does).
/// `moth_tensor_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_tensor_free(tensor: *mut moth_tensor) {
    ffi_boundary!("moth_tensor_free", void, {
        drop(release(tensor, "tensor")?);
        Ok(())
    })
}
