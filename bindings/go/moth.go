// Package moth is the Go binding of libmoth.so, the C ABI of moth: MOTH
// model orthogonalisation (class-distance hardening) of image classifiers.
//
// A trainer drives a hardening Session one training step at a time: it
// hands each batch to Session.HardenBatch, trains its own model on the
// stamped pixels it gets back (labels unchanged), reports clean accuracy
// when the session asks for it, and may checkpoint the session at any step
// boundary. The Classifier the session inverts triggers on is loaded from a
// TorchScript file.
//
// # Building
//
// cgo finds moth.h and libmoth.so through pkg-config (`#cgo pkg-config:
// moth`), so the package builds wherever it is copied or vendored. In the
// moth repository, after cargo build --release, scripts/gen-pc.sh writes
// target/release/moth.pc (moth.h's folder, libmoth.so's folder and an rpath
// to it); point pkg-config at it:
//
//	export PKG_CONFIG_PATH=$MOTH/target/release
//
// libmoth.so carries an rpath to the libtorch it was built with, so nothing
// else is needed. See README.md in this folder.
//
// # Errors
//
// Every failure is an *Error carrying the C status (a Status) and moth's
// message. Status implements error, so errors.Is(err, moth.StatusWrongShape)
// tests for one status, and errors.As(err, &status) extracts it.
//
// Two statuses are flow signals, not failures (Status.IsFlowSignal):
// StatusAccuracyWanted from HardenBatch means "call ReportAccuracy, then
// retry the same batch", and StatusDone means the session finished. Treat
// them like io.EOF: expected values that steer the training loop. Failures
// and flow signals both leave the session unchanged.
//
// # Threads and memory
//
// A Session or Classifier may be used from several goroutines; moth
// serialises calls on one object. Config and Tensor values must not be used
// by two goroutines at once. Each call and the read of its error message
// run on one locked OS thread, so a message always belongs to the call that
// failed, even when goroutines share a session. Go memory is only lent to
// moth for the duration of a call: tensors are built by copying slices, and
// results are copied back into Go slices.
//
// Owning types (Config, Classifier, Session, Tensor) free their C object in
// Close. A finalizer frees one that was not closed, but only when the
// garbage collector gets to it, which can be much later: call Close.
package moth

/*
#cgo pkg-config: moth
#include <stdlib.h>
#include "moth.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// HeaderABIVersion is the ABI version of the moth.h this package was
// compiled against; ABIVersion reports the loaded library's.
const HeaderABIVersion = uint32(C.MOTH_ABI_VERSION)

// MaxDirections is the most directions one step report holds.
const MaxDirections = int(C.MOTH_MAX_DIRECTIONS)

// Version returns the loaded library's version, "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.moth_version())
}

// ABIVersion returns the ABI version of the loaded libmoth.so.
func ABIVersion() uint32 {
	return uint32(C.moth_abi_version())
}

var abiOnce sync.Once
var abiErr error

// CheckABI reports whether the loaded libmoth.so speaks the ABI of the
// header this package was compiled with. The constructors of this package
// call it, so a mismatched library fails cleanly instead of misreading
// structs.
func CheckABI() error {
	abiOnce.Do(func() {
		if got := ABIVersion(); got != HeaderABIVersion {
			abiErr = &Error{
				Status: StatusUnsupported,
				Message: fmt.Sprintf("libmoth.so %s has ABI version %d, this package was built for %d",
					Version(), got, HeaderABIVersion),
			}
		}
	})
	return abiErr
}

// call runs one moth call and turns a status other than OK into an *Error
// with the call's message. The OS thread is locked across the call and the
// read of the thread-local message: otherwise the goroutine could move to
// another thread in between and read someone else's message (or none).
// The thread-local message is exact even when goroutines share a session,
// which the per-session message is not.
func call(f func() C.moth_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.MOTH_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(st), Message: threadMessage()}
}

// callString runs a moth function that writes a string into a caller
// buffer, on a locked OS thread like call.
func callString(f func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status) (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s, st := readString(f)
	if st != C.MOTH_STATUS_OK {
		return "", &Error{Status: Status(st), Message: threadMessage()}
	}
	return s, nil
}

// threadMessage reads moth_last_error; the caller holds the OS thread.
func threadMessage() string {
	msg, st := readString(func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status {
		return C.moth_last_error(buf, n, needed)
	})
	if st != C.MOTH_STATUS_OK {
		return "(message unavailable: " + Status(st).String() + ")"
	}
	return msg
}

// readString calls a moth function that writes a NUL-terminated string
// into a caller buffer, growing the buffer when moth says it is too small.
// The first buffer is large enough for every message and configuration
// moth writes today, so the usual case is one call: a call with a buffer
// that is too small would itself be recorded as the last error.
func readString(f func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status) (string, C.moth_status) {
	size := 16 << 10
	for {
		buf := make([]byte, size)
		var needed C.size_t
		st := f((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &needed)
		if st == C.MOTH_STATUS_BUFFER_TOO_SMALL && int(needed) > size {
			size = int(needed)
			continue
		}
		if st != C.MOTH_STATUS_OK {
			return "", st
		}
		return C.GoString((*C.char)(unsafe.Pointer(&buf[0]))), st
	}
}

// cString copies s into C memory (the caller frees it), refusing a string
// with a NUL byte: C would see it cut short there, so a path "a\x00b" would
// silently name the file "a".
func cString(what, s string) (*C.char, error) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return nil, &Error{
			Status:  StatusInvalidArgument,
			Message: fmt.Sprintf("moth: the %s holds a NUL byte at offset %d: %q", what, i, s),
		}
	}
	return C.CString(s), nil
}

// closedError is what a method of a closed object returns: the status moth
// itself gives for a NULL handle.
func closedError(what string) error {
	return &Error{Status: StatusNullPointer, Message: "moth: " + what + " used after Close"}
}
