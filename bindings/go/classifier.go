package moth

/*
#include <stdlib.h>
#include "moth.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Classifier is the model a session inverts triggers on. Safe for
// concurrent use: moth serialises calls on one classifier, and several
// sessions may share it.
type Classifier struct {
	// mu lets Close wait for calls in flight instead of freeing the
	// handle under them.
	mu sync.RWMutex
	h  *C.moth_classifier
}

// LoadTorchScript loads a TorchScript module (torch.jit.save) that maps
// [n, c, h, w] float pixels in [0, 1] to logits [n, classes], onto dev. The
// class count is read from a probe forward pass. A file libtorch cannot
// load (missing, unreadable, not TorchScript) gives StatusFormat.
func LoadTorchScript(path string, c, h, w int64, dev Device) (*Classifier, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	p, err := cString("path", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(p))
	var out *C.moth_classifier
	err = call(func() C.moth_status {
		return C.moth_classifier_from_torchscript(p, C.int64_t(c), C.int64_t(h), C.int64_t(w), dev.c(), &out)
	})
	if err != nil {
		return nil, err
	}
	clf := &Classifier{h: out}
	runtime.SetFinalizer(clf, (*Classifier).Close)
	return clf, nil
}

// Close frees the classifier after any call in progress. Closing twice is
// harmless.
func (clf *Classifier) Close() error {
	if clf == nil {
		return nil
	}
	clf.mu.Lock()
	defer clf.mu.Unlock()
	if clf.h != nil {
		C.moth_classifier_free(clf.h)
		clf.h = nil
		runtime.SetFinalizer(clf, nil)
	}
	return nil
}

// with runs f with the handle held open; the caller must not already hold
// clf.mu (a pending Close would deadlock a second read lock).
func (clf *Classifier) with(f func(h *C.moth_classifier) error) error {
	if clf == nil {
		return closedError("Classifier")
	}
	clf.mu.RLock()
	defer clf.mu.RUnlock()
	if clf.h == nil {
		return closedError("Classifier")
	}
	return f(clf.h)
}

// SetTrain switches the model between training and evaluation mode.
func (clf *Classifier) SetTrain(train bool) error {
	return clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status { return C.moth_classifier_set_train(h, C.bool(train)) })
	})
}

// ForwardTensor computes logits for x without gradients.
func (clf *Classifier) ForwardTensor(x *Tensor) (*Tensor, error) {
	xh, err := x.handle()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(x)
	var out *C.moth_tensor
	err = clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status { return C.moth_classifier_forward(h, xh, &out) })
	})
	if err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// Forward computes logits for a batch of pixels of the given shape (C
// order, values in [0, 1]); it returns them row-major with the class count,
// logits[i*classes+k] being sample i's logit for class k. Use it to measure
// the clean accuracy a session asks for.
func (clf *Classifier) Forward(pixels []float32, shape [4]int64) (logits []float32, classes int, err error) {
	x, err := NewTensor(pixels, shape[:], CPU)
	if err != nil {
		return nil, 0, err
	}
	defer x.Close()
	y, err := clf.ForwardTensor(x)
	if err != nil {
		return nil, 0, err
	}
	defer y.Close()
	dims, err := y.Shape()
	if err != nil {
		return nil, 0, err
	}
	if len(dims) != 2 || dims[0] != shape[0] {
		return nil, 0, &Error{Status: StatusWrongShape,
			Message: fmt.Sprintf("moth: the model returned logits of shape %v for %d inputs", dims, shape[0])}
	}
	dt, err := y.DType()
	if err != nil {
		return nil, 0, err
	}
	if dt == Float64 {
		wide, err := TensorData[float64](y)
		if err != nil {
			return nil, 0, err
		}
		logits = make([]float32, len(wide))
		for i, v := range wide {
			logits[i] = float32(v)
		}
	} else if logits, err = TensorData[float32](y); err != nil {
		return nil, 0, err
	}
	return logits, int(dims[1]), nil
}

// Save writes the TorchScript module (with whatever training happened
// through moth) to path, loadable with torch.jit.load.
func (clf *Classifier) Save(path string) error {
	p, err := cString("path", path)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(p))
	return clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status { return C.moth_classifier_save(h, p) })
	})
}
