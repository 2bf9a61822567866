package moth

/*
#include <stdlib.h>
#include "moth.h"
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Trainer trains a TorchScript Classifier with moth's own optimisers (SGD
// with Nesterov momentum, Adam), whose state it checkpoints with the model
// so that a resumed run continues bit for bit. The Classifier must outlive
// the Trainer. Safe for concurrent use (moth serialises its calls).
type Trainer struct {
	mu  sync.RWMutex
	h   *C.moth_trainer
	clf *Classifier
}

func newTrainer(h *C.moth_trainer, clf *Classifier) *Trainer {
	t := &Trainer{h: h, clf: clf}
	runtime.SetFinalizer(t, (*Trainer).Close)
	return t
}

// NewTrainer makes a trainer for clf. optimizer is "" or "hardening" (SGD,
// lr 1e-4, Nesterov momentum 0.9), "pretraining" (Adam, lr 1e-3) or a
// complete JSON object such as
// {"kind":{"Adam":{"beta1":0.9,"beta2":0.999}},"lr":0.001,"weight_decay":0}.
func NewTrainer(clf *Classifier, optimizer string) (*Trainer, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	var opt *C.char
	if optimizer != "" {
		p, err := cString("optimizer", optimizer)
		if err != nil {
			return nil, err
		}
		defer C.free(unsafe.Pointer(p))
		opt = p
	}
	var out *C.moth_trainer
	err := clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status { return C.moth_trainer_new(h, opt, &out) })
	})
	if err != nil {
		return nil, err
	}
	return newTrainer(out, clf), nil
}

// LoadTrainer restores a checkpoint written by Trainer.Save: clf (a
// TorchScript classifier for the same inputs and classes) takes the saved
// model, and the returned trainer the saved optimiser state.
func LoadTrainer(clf *Classifier, path string) (*Trainer, error) {
	p, err := cString("path", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(p))
	var out *C.moth_trainer
	err = clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status { return C.moth_trainer_load(h, p, &out) })
	})
	if err != nil {
		return nil, err
	}
	return newTrainer(out, clf), nil
}

// TrainerFromBytes is LoadTrainer from the bytes of Trainer.ToBytes.
func TrainerFromBytes(clf *Classifier, data []byte) (*Trainer, error) {
	if len(data) == 0 {
		return nil, &Error{Status: StatusCheckpoint, Message: "moth: empty trainer checkpoint"}
	}
	var out *C.moth_trainer
	err := clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status {
			return C.moth_trainer_from_buffer(h, (*C.uint8_t)(unsafe.Pointer(&data[0])), C.size_t(len(data)), &out)
		})
	})
	if err != nil {
		return nil, err
	}
	return newTrainer(out, clf), nil
}

// Close frees the trainer (not its classifier); closing twice is harmless.
func (t *Trainer) Close() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.h != nil {
		C.moth_trainer_free(t.h)
		t.h = nil
		runtime.SetFinalizer(t, nil)
	}
	return nil
}

func (t *Trainer) do(f func(h *C.moth_trainer) C.moth_status) error {
	if t == nil {
		return closedError("Trainer")
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.h == nil {
		return closedError("Trainer")
	}
	defer runtime.KeepAlive(t.clf)
	return call(func() C.moth_status { return f(t.h) })
}

// Step trains on one batch (pixels [n, C, H, W] in [0, 1], typically the
// stamped batch of Session.HardenBatch, with the true labels) and returns
// the batch loss before the update.
func (t *Trainer) Step(pixels []float32, shape [4]int64, labels []int64) (float64, error) {
	x, err := NewTensor(pixels, shape[:], CPU)
	if err != nil {
		return 0, err
	}
	defer x.Close()
	y, err := NewTensor(labels, []int64{int64(len(labels))}, CPU)
	if err != nil {
		return 0, err
	}
	defer y.Close()
	xh, _ := x.handle()
	yh, _ := y.handle()
	var loss C.double
	err = t.do(func(h *C.moth_trainer) C.moth_status { return C.moth_trainer_step(h, xh, yh, &loss) })
	return float64(loss), err
}

// Steps returns the steps taken (counted across checkpoints).
func (t *Trainer) Steps() (uint64, error) {
	var n C.uint64_t
	err := t.do(func(h *C.moth_trainer) C.moth_status { return C.moth_trainer_steps(h, &n) })
	return uint64(n), err
}

// Save writes the model and optimiser state to path, atomically. Save the
// session beside it at the same step.
func (t *Trainer) Save(path string) error {
	p, err := cString("path", path)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(p))
	return t.do(func(h *C.moth_trainer) C.moth_status { return C.moth_trainer_save(h, p) })
}

// ToBytes returns what Save writes.
func (t *Trainer) ToBytes() ([]byte, error) {
	var b *C.moth_buffer
	if err := t.do(func(h *C.moth_trainer) C.moth_status { return C.moth_trainer_to_buffer(h, &b) }); err != nil {
		return nil, err
	}
	defer C.moth_buffer_free(b)
	var data *C.uint8_t
	var n C.size_t
	if err := call(func() C.moth_status { return C.moth_buffer_data(b, &data, &n) }); err != nil {
		return nil, err
	}
	return C.GoBytes(unsafe.Pointer(data), C.int(n)), nil
}
