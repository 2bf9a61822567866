package moth

/*
#include <stdint.h>
#include "moth.h"

extern int32_t mothGoHostForward(void *, float *, size_t, size_t, size_t, size_t, float *, size_t);
extern int32_t mothGoHostInputGrad(void *, float *, size_t, size_t, size_t, size_t, float *, size_t, float *);
extern void mothGoDeleteHandle(void *);

static int32_t moth_go_forward(void *u, const float *x, size_t n, size_t c, size_t h, size_t w,
                               float *logits, size_t k) {
	return mothGoHostForward(u, (float *)x, n, c, h, w, logits, k);
}

static int32_t moth_go_input_grad(void *u, const float *x, size_t n, size_t c, size_t h, size_t w,
                                  const float *g, size_t k, float *gx) {
	return mothGoHostInputGrad(u, (float *)x, n, c, h, w, (float *)g, k, gx);
}

static moth_status moth_go_classifier_from_host(uintptr_t handle, size_t classes,
                                                moth_classifier **out) {
	return moth_classifier_from_host(moth_go_forward, moth_go_input_grad, NULL, (void *)handle,
	                                 mothGoDeleteHandle, classes, out);
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
)

// HostModel is a classifier outside libtorch (written in Go, or any
// framework Go can call), given to moth through NewHostClassifier. Buffers
// are float32 NCHW row-major: x[((i*C+c)*H+y)*W+x] for shape {N, C, H, W};
// logits and their gradients are row-major [N, classes]. They are lent for
// the duration of the call: copy what you keep. Methods run on the
// goroutine of the moth call that needs them (inversion, hardening,
// distances); they must not call moth on the same Classifier.
type HostModel interface {
	// Forward writes the logits of the inputs x into logits.
	Forward(x []float32, shape [4]int, logits []float32) error
	// InputGrad writes dL/dx = J(x)^T gradLogits into gradInput: the
	// gradient of a loss with respect to the inputs, given its gradient
	// with respect to the logits Forward computes for the same x (a
	// vector-Jacobian product, evaluation mode).
	InputGrad(x []float32, shape [4]int, gradLogits, gradInput []float32) error
}

// NewHostClassifier makes a Classifier of a HostModel with numClasses
// logits. moth computes the loss gradient with respect to the logits
// itself, asks m for the input gradient, and carries it on to its
// triggers, so hardening sessions and distance measurements work as with a
// TorchScript model. Training m on the stamped batches is the caller's.
func NewHostClassifier(m HostModel, numClasses int) (*Classifier, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	h := cgo.NewHandle(m)
	var out *C.moth_classifier
	err := call(func() C.moth_status {
		return C.moth_go_classifier_from_host(C.uintptr_t(h), C.size_t(numClasses), &out)
	})
	if err != nil {
		h.Delete() // moth did not take it
		return nil, err
	}
	clf := &Classifier{h: out}
	runtime.SetFinalizer(clf, (*Classifier).Close)
	return clf, nil
}
