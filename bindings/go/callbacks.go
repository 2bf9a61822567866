package moth

// The Go functions C calls back: a distance measurement's progress, and the
// forward pass and input gradient of a HostModel. C gets a cgo.Handle as
// user_data and passes it back; moth calls each one synchronously on the
// thread of the moth call that invoked it. (A file with //export may only
// declare C functions in its preamble; the C glue that takes their
// addresses is in hostmodel.go and distance.go.)

/*
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include "moth.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

//export mothGoProgress
func mothGoProgress(user unsafe.Pointer, done, total C.size_t) C.int32_t {
	f := cgo.Handle(uintptr(user)).Value().(func(done, total int) bool)
	if f(int(done), int(total)) {
		return 0
	}
	return 1
}

// floats views n floats of C memory as a Go slice (valid during the call).
func floats(p *C.float, n int) []float32 {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), n)
}

// failed tells moth why a callback failed and returns its status.
func failed(what string, err error) C.int32_t {
	msg := C.CString(fmt.Sprintf("%s: %v", what, err))
	defer C.free(unsafe.Pointer(msg))
	C.moth_callback_set_error(msg)
	return 1
}

//export mothGoHostForward
func mothGoHostForward(user unsafe.Pointer, input *C.float, n, c, h, w C.size_t, logits *C.float, classes C.size_t) C.int32_t {
	m := cgo.Handle(uintptr(user)).Value().(HostModel)
	shape := [4]int{int(n), int(c), int(h), int(w)}
	in := floats(input, shape[0]*shape[1]*shape[2]*shape[3])
	if err := m.Forward(in, shape, floats(logits, int(n*classes))); err != nil {
		return failed("Forward", err)
	}
	return 0
}

//export mothGoHostInputGrad
func mothGoHostInputGrad(user unsafe.Pointer, input *C.float, n, c, h, w C.size_t, gradLogits *C.float, classes C.size_t, gradInput *C.float) C.int32_t {
	m := cgo.Handle(uintptr(user)).Value().(HostModel)
	shape := [4]int{int(n), int(c), int(h), int(w)}
	size := shape[0] * shape[1] * shape[2] * shape[3]
	if err := m.InputGrad(floats(input, size), shape, floats(gradLogits, int(n*classes)), floats(gradInput, size)); err != nil {
		return failed("InputGrad", err)
	}
	return 0
}

//export mothGoDeleteHandle
func mothGoDeleteHandle(user unsafe.Pointer) {
	cgo.Handle(uintptr(user)).Delete()
}
