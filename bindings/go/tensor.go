package moth

/*
#include "moth.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// DType is a tensor element type.
type DType int32

// The element types moth exchanges (MOTH_DTYPE_*).
const (
	Float32 = DType(C.MOTH_DTYPE_FLOAT32)
	Float64 = DType(C.MOTH_DTYPE_FLOAT64)
	Int64   = DType(C.MOTH_DTYPE_INT64)
	Int32   = DType(C.MOTH_DTYPE_INT32)
	Uint8   = DType(C.MOTH_DTYPE_UINT8)
)

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Float64:
		return "float64"
	case Int64:
		return "int64"
	case Int32:
		return "int32"
	case Uint8:
		return "uint8"
	}
	return fmt.Sprintf("DType(%d)", int32(d))
}

// Element is a Go type with a moth DType.
type Element interface {
	float32 | float64 | int64 | int32 | uint8
}

func dtypeOf[E Element]() DType {
	var zero E
	switch any(zero).(type) {
	case float32:
		return Float32
	case float64:
		return Float64
	case int64:
		return Int64
	case int32:
		return Int32
	default:
		return Uint8
	}
}

// DeviceType is the kind of a device (MOTH_DEVICE_TYPE_*).
type DeviceType int32

// Device kinds.
const (
	DeviceCPU  = DeviceType(C.MOTH_DEVICE_TYPE_CPU)
	DeviceCUDA = DeviceType(C.MOTH_DEVICE_TYPE_CUDA)
)

// Device is where a tensor or model lives.
type Device struct {
	Type  DeviceType
	Index int32 // CUDA device index; 0 for the CPU
}

// CPU is host memory.
var CPU = Device{Type: DeviceCPU}

// CUDA returns CUDA device i.
func CUDA(i int) Device {
	return Device{Type: DeviceCUDA, Index: int32(i)}
}

func (d Device) String() string {
	if d.Type == DeviceCUDA {
		return fmt.Sprintf("cuda:%d", d.Index)
	}
	if d.Type == DeviceCPU {
		return "cpu"
	}
	return fmt.Sprintf("Device(%d, %d)", int32(d.Type), d.Index)
}

func (d Device) c() C.moth_device {
	return C.moth_device{_type: C.moth_device_type(d.Type), index: C.int32_t(d.Index)}
}

// Tensor is a moth tensor handle: one reference to a libtorch tensor, on
// any device. Most callers never need one (Session.HardenBatch takes Go
// slices); it is for keeping data on a GPU between calls. Not safe for
// concurrent use.
type Tensor struct {
	h *C.moth_tensor
}

func newTensor(h *C.moth_tensor) *Tensor {
	t := &Tensor{h: h}
	runtime.SetFinalizer(t, (*Tensor).Close)
	return t
}

// Close frees the handle. Closing twice is harmless.
func (t *Tensor) Close() error {
	if t != nil && t.h != nil {
		C.moth_tensor_free(t.h)
		t.h = nil
		runtime.SetFinalizer(t, nil)
	}
	return nil
}

func (t *Tensor) handle() (*C.moth_tensor, error) {
	if t == nil || t.h == nil {
		return nil, closedError("Tensor")
	}
	return t.h, nil
}

// numel is the element count of shape, refusing negative dimensions and
// overflow (Go must not tell C that a slice is longer than it is).
func numel(shape []int64) (int, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, &Error{Status: StatusInvalidArgument,
				Message: fmt.Sprintf("moth: shape %v has a negative dimension", shape)}
		}
		if d != 0 && n > (1<<62)/d {
			return 0, &Error{Status: StatusInvalidArgument,
				Message: fmt.Sprintf("moth: shape %v overflows", shape)}
		}
		n *= d
	}
	return int(n), nil
}

// NewTensor copies data (C order) into a new tensor of the given shape on
// dev. len(data) must equal the product of shape (StatusInvalidArgument
// otherwise). moth copies the slice during the call and keeps no pointer
// to it.
func NewTensor[E Element](data []E, shape []int64, dev Device) (*Tensor, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	n, err := numel(shape)
	if err != nil {
		return nil, err
	}
	if n != len(data) {
		return nil, &Error{Status: StatusInvalidArgument,
			Message: fmt.Sprintf("moth: shape %v needs %d elements, the slice has %d", shape, n, len(data))}
	}
	var p unsafe.Pointer
	if n > 0 {
		p = unsafe.Pointer(&data[0])
	}
	var sp *C.int64_t
	if len(shape) > 0 {
		sp = (*C.int64_t)(unsafe.Pointer(&shape[0]))
	}
	var h *C.moth_tensor
	err = call(func() C.moth_status {
		return C.moth_tensor_from_buffer(p, C.moth_dtype(dtypeOf[E]()), sp, C.size_t(len(shape)), dev.c(), &h)
	})
	if err != nil {
		return nil, err
	}
	return newTensor(h), nil
}

// Shape returns the tensor's sizes.
func (t *Tensor) Shape() ([]int64, error) {
	h, err := t.handle()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(t)
	var ndim C.size_t
	// Eight dimensions cover every tensor moth makes; a larger rank is
	// retried with the size moth reports.
	shape := make([]int64, 8)
	for {
		err = call(func() C.moth_status {
			return C.moth_tensor_shape(h, (*C.int64_t)(unsafe.Pointer(&shape[0])), C.size_t(len(shape)), &ndim)
		})
		if errors.Is(err, StatusBufferTooSmall) && int(ndim) > len(shape) {
			shape = make([]int64, int(ndim))
			continue
		}
		if err != nil {
			return nil, err
		}
		break
	}
	return shape[:int(ndim)], nil
}

// DType returns the tensor's element type.
func (t *Tensor) DType() (DType, error) {
	h, err := t.handle()
	if err != nil {
		return 0, err
	}
	defer runtime.KeepAlive(t)
	var d C.moth_dtype
	err = call(func() C.moth_status { return C.moth_tensor_dtype(h, &d) })
	return DType(d), err
}

// Device returns where the tensor lives.
func (t *Tensor) Device() (Device, error) {
	h, err := t.handle()
	if err != nil {
		return Device{}, err
	}
	defer runtime.KeepAlive(t)
	var d C.moth_device
	err = call(func() C.moth_status { return C.moth_tensor_device(h, &d) })
	return Device{Type: DeviceType(d._type), Index: int32(d.index)}, err
}

// TensorData copies the tensor's elements (from any device) into a new Go
// slice, in C order. E must match the tensor's DType (StatusWrongDtype
// otherwise).
func TensorData[E Element](t *Tensor) ([]E, error) {
	h, err := t.handle()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(t)
	dt, err := t.DType()
	if err != nil {
		return nil, err
	}
	if want := dtypeOf[E](); dt != want {
		return nil, &Error{Status: StatusWrongDtype,
			Message: fmt.Sprintf("moth: the tensor holds %v, not %v", dt, want)}
	}
	shape, err := t.Shape()
	if err != nil {
		return nil, err
	}
	n, err := numel(shape)
	if err != nil {
		return nil, err
	}
	out := make([]E, n)
	if n == 0 {
		return out, nil
	}
	var zero E
	bytes := C.size_t(n) * C.size_t(unsafe.Sizeof(zero))
	err = call(func() C.moth_status {
		return C.moth_tensor_copy_to_buffer(h, unsafe.Pointer(&out[0]), bytes)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
