package moth

/*
#include "moth.h"
*/
import "C"

// Status is a moth_status: 0 success, positive flow signals, negative
// failures. It implements error so that each Status constant can be the
// target of errors.Is, like syscall.Errno.
type Status int32

// The values of enum moth_status (see include/moth.h for what each means).
const (
	StatusOK              = Status(C.MOTH_STATUS_OK)
	StatusDone            = Status(C.MOTH_STATUS_DONE)
	StatusAccuracyWanted  = Status(C.MOTH_STATUS_ACCURACY_WANTED)
	StatusCancelled       = Status(C.MOTH_STATUS_CANCELLED)
	StatusNullPointer     = Status(C.MOTH_STATUS_NULL_POINTER)
	StatusInvalidUTF8     = Status(C.MOTH_STATUS_INVALID_UTF8)
	StatusInvalidArgument = Status(C.MOTH_STATUS_INVALID_ARGUMENT)
	StatusInvalidConfig   = Status(C.MOTH_STATUS_INVALID_CONFIG)
	StatusInvalidInput    = Status(C.MOTH_STATUS_INVALID_INPUT)
	StatusWrongShape      = Status(C.MOTH_STATUS_WRONG_SHAPE)
	StatusWrongDtype      = Status(C.MOTH_STATUS_WRONG_DTYPE)
	StatusLabelOutOfRange = Status(C.MOTH_STATUS_LABEL_OUT_OF_RANGE)
	StatusInvalidValue    = Status(C.MOTH_STATUS_INVALID_VALUE)
	StatusPhase           = Status(C.MOTH_STATUS_PHASE)
	StatusCheckpoint      = Status(C.MOTH_STATUS_CHECKPOINT)
	StatusIO              = Status(C.MOTH_STATUS_IO)
	StatusFormat          = Status(C.MOTH_STATUS_FORMAT)
	StatusDevice          = Status(C.MOTH_STATUS_DEVICE)
	StatusTorch           = Status(C.MOTH_STATUS_TORCH)
	StatusCallback        = Status(C.MOTH_STATUS_CALLBACK)
	StatusBufferTooSmall  = Status(C.MOTH_STATUS_BUFFER_TOO_SMALL)
	StatusPanic           = Status(C.MOTH_STATUS_PANIC)
	StatusPoisoned        = Status(C.MOTH_STATUS_POISONED)
	StatusBusy            = Status(C.MOTH_STATUS_BUSY)
	StatusUnsupported     = Status(C.MOTH_STATUS_UNSUPPORTED)
)

// String returns the C name of the status, "MOTH_STATUS_WRONG_SHAPE", or
// "MOTH_STATUS_UNKNOWN" for a value moth does not define.
func (s Status) String() string {
	return C.GoString(C.moth_status_name(C.int32_t(s)))
}

// Error makes a Status usable as an errors.Is target.
func (s Status) Error() string {
	return s.String()
}

// IsFlowSignal reports whether s is a positive status: nothing failed, but
// the call did not do its work (StatusDone, StatusAccuracyWanted).
func (s Status) IsFlowSignal() bool {
	return s > 0
}

// IsFailure reports whether s is a negative status.
func (s Status) IsFailure() bool {
	return s < 0
}

// Error is what every function of this package returns when moth did not
// answer StatusOK: the status and moth's message for it.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "moth: " + e.Status.String()
	}
	return e.Message + " (" + e.Status.String() + ")"
}

// Unwrap exposes the status, so errors.Is(err, StatusPhase) and
// errors.As(err, &status) see through an *Error (and any wrapping of it).
func (e *Error) Unwrap() error {
	return e.Status
}
