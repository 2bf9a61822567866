package moth

/*
#include <stdint.h>
#include <stdlib.h>
#include "moth.h"

extern int32_t mothGoProgress(void *, size_t, size_t);

static moth_status moth_go_distance_measure(moth_classifier *clf, const moth_distance_config *cfg,
                                            const moth_tensor *x, const moth_tensor *y,
                                            size_t classes, const size_t *pairs, size_t npairs,
                                            uintptr_t progress, moth_distance_result **out) {
	return moth_distance_measure(clf, cfg, x, y, classes, pairs, npairs,
	                             progress ? mothGoProgress : NULL, (void *)progress, out);
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// DistanceConfig is a class-distance protocol: samples per class,
// inversion steps, seeds, initial cost and ASR bound (the CLI's `moth
// distance --protocol`). Not for concurrent use.
type DistanceConfig struct {
	h *C.moth_distance_config
}

// NewDistanceConfig starts from a preset: "quick" (32 samples per class,
// 200 steps, seed 0), "confirm" (64, 600, seeds 0 and 1) or "paper" (100,
// 1000, seeds 0, 1, 2).
func NewDistanceConfig(preset string) (*DistanceConfig, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	p, err := cString("preset", preset)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(p))
	var out *C.moth_distance_config
	if err := call(func() C.moth_status { return C.moth_distance_config_new(p, &out) }); err != nil {
		return nil, err
	}
	c := &DistanceConfig{h: out}
	runtime.SetFinalizer(c, (*DistanceConfig).Close)
	return c, nil
}

// Close frees the protocol; closing twice is harmless.
func (c *DistanceConfig) Close() error {
	if c != nil && c.h != nil {
		C.moth_distance_config_free(c.h)
		c.h = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

func (c *DistanceConfig) do(f func(h *C.moth_distance_config) C.moth_status) error {
	if c == nil || c.h == nil {
		return closedError("DistanceConfig")
	}
	return call(func() C.moth_status { return f(c.h) })
}

// SetSamples sets the samples inverted per source class.
func (c *DistanceConfig) SetSamples(n int) error {
	return c.do(func(h *C.moth_distance_config) C.moth_status {
		return C.moth_distance_config_set_samples(h, C.size_t(n))
	})
}

// SetSteps sets the inversion steps per direction.
func (c *DistanceConfig) SetSteps(n int) error {
	return c.do(func(h *C.moth_distance_config) C.moth_status {
		return C.moth_distance_config_set_steps(h, C.size_t(n))
	})
}

// SetSeeds sets the seeds (at least one); a distance is the smallest over
// the seeds that reached the ASR bound.
func (c *DistanceConfig) SetSeeds(seeds ...uint64) error {
	return c.do(func(h *C.moth_distance_config) C.moth_status {
		if len(seeds) == 0 {
			return C.moth_distance_config_set_seeds(h, nil, 0)
		}
		return C.moth_distance_config_set_seeds(h, (*C.uint64_t)(unsafe.Pointer(&seeds[0])), C.size_t(len(seeds)))
	})
}

// SetInitCost sets the initial weight of the mask-size term.
func (c *DistanceConfig) SetInitCost(v float64) error {
	return c.do(func(h *C.moth_distance_config) C.moth_status {
		return C.moth_distance_config_set_init_cost(h, C.double(v))
	})
}

// SetASRBound sets the attack success rate a trigger must reach.
func (c *DistanceConfig) SetASRBound(v float64) error {
	return c.do(func(h *C.moth_distance_config) C.moth_status {
		return C.moth_distance_config_set_asr_bound(h, C.double(v))
	})
}

// SetJSON merges a JSON object into the protocol (the form JSON prints).
func (c *DistanceConfig) SetJSON(json string) error {
	p, err := cString("JSON text", json)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(p))
	return c.do(func(h *C.moth_distance_config) C.moth_status { return C.moth_distance_config_set_json(h, p) })
}

// JSON returns the whole protocol as a JSON object.
func (c *DistanceConfig) JSON() (string, error) {
	if c == nil || c.h == nil {
		return "", closedError("DistanceConfig")
	}
	return callString(func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status {
		return C.moth_distance_config_to_json(c.h, buf, n, needed)
	})
}

// Trigger is the smallest trigger found for one direction: Mask is [H, W]
// in [0, 1], Pattern [C, H, W] in [0, 1]; a stamped image is
// (1-mask)*x + mask*pattern.
type Trigger struct {
	Mask, Pattern []float32
}

// Distances is a measured class-distance matrix with its triggers.
type Distances struct {
	// NumClasses is N.
	NumClasses int
	// Values holds N*N distances, row-major: Values[a*N+b] is a -> b (0 on
	// the diagonal, for pairs not measured and for failed inversions).
	Values []float64
	// Triggers holds the trigger of every direction that reached the ASR
	// bound, keyed by {source, target}.
	Triggers map[[2]int]Trigger
	// JSON is the result in the form of `moth distance`'s distances.json.
	JSON string
}

// MeasureDistances measures class distances of clf on labelled samples:
// pixels [n, C, H, W] (NCHW row-major, in [0, 1]) with shape, labels in
// [0, numClasses). pairs lists the directed pairs {source, target} to
// measure (nil: all). progress, when not nil, is called after each source
// class with the pairs done and the total; returning false stops the
// measurement with StatusCancelled. The same protocol and samples give the
// matrix `moth distance` writes.
func MeasureDistances(clf *Classifier, cfg *DistanceConfig, pixels []float32, shape [4]int64, labels []int64,
	numClasses int, pairs [][2]int, progress func(done, total int) bool) (*Distances, error) {
	if cfg == nil || cfg.h == nil {
		return nil, closedError("DistanceConfig")
	}
	x, err := NewTensor(pixels, shape[:], CPU)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	y, err := NewTensor(labels, []int64{int64(len(labels))}, CPU)
	if err != nil {
		return nil, err
	}
	defer y.Close()
	xh, _ := x.handle()
	yh, _ := y.handle()
	flat := make([]C.size_t, 0, 2*len(pairs))
	for _, p := range pairs {
		flat = append(flat, C.size_t(p[0]), C.size_t(p[1]))
	}
	var pp *C.size_t
	if len(flat) > 0 {
		pp = &flat[0]
	}
	var ph C.uintptr_t
	if progress != nil {
		h := cgo.NewHandle(progress)
		defer h.Delete()
		ph = C.uintptr_t(h)
	}
	var res *C.moth_distance_result
	err = clf.with(func(h *C.moth_classifier) error {
		return call(func() C.moth_status {
			return C.moth_go_distance_measure(h, cfg.h, xh, yh, C.size_t(numClasses), pp, C.size_t(len(pairs)), ph, &res)
		})
	})
	if err != nil {
		return nil, err
	}
	defer C.moth_distance_result_free(res)
	return readDistances(res)
}

// readDistances copies a result into Go values.
func readDistances(res *C.moth_distance_result) (*Distances, error) {
	var n C.size_t
	if err := call(func() C.moth_status { return C.moth_distance_result_num_classes(res, &n) }); err != nil {
		return nil, err
	}
	d := &Distances{NumClasses: int(n), Values: make([]float64, int(n*n)), Triggers: map[[2]int]Trigger{}}
	if err := call(func() C.moth_status {
		return C.moth_distance_result_matrix(res, (*C.double)(unsafe.Pointer(&d.Values[0])), n*n)
	}); err != nil {
		return nil, err
	}
	var c, h, w C.int64_t
	if err := call(func() C.moth_status { return C.moth_distance_result_input_shape(res, &c, &h, &w) }); err != nil {
		return nil, err
	}
	for a := 0; a < int(n); a++ {
		for b := 0; b < int(n); b++ {
			t := Trigger{Mask: make([]float32, h*w), Pattern: make([]float32, c*h*w)}
			var found C.bool
			if err := call(func() C.moth_status {
				return C.moth_distance_result_trigger(res, C.size_t(a), C.size_t(b),
					(*C.float)(unsafe.Pointer(&t.Mask[0])), C.size_t(len(t.Mask)),
					(*C.float)(unsafe.Pointer(&t.Pattern[0])), C.size_t(len(t.Pattern)), &found)
			}); err != nil {
				return nil, err
			}
			if found {
				d.Triggers[[2]int{a, b}] = t
			}
		}
	}
	js, err := callString(func(buf *C.char, len C.size_t, needed *C.size_t) C.moth_status {
		return C.moth_distance_result_to_json(res, buf, len, needed)
	})
	if err != nil {
		return nil, err
	}
	d.JSON = js
	return d, nil
}
