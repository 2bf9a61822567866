package moth

/*
#include <stdlib.h>
#include "moth.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Config holds the hyper-parameters of a session, starting from the
// reference defaults. A session copies it, so it may be changed or closed
// once NewSession returned. Not safe for concurrent use.
type Config struct {
	h *C.moth_config
}

// NewConfig returns a configuration holding the reference defaults.
func NewConfig() (*Config, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	var h *C.moth_config
	if err := call(func() C.moth_status { return C.moth_config_new(&h) }); err != nil {
		return nil, err
	}
	c := &Config{h: h}
	runtime.SetFinalizer(c, (*Config).Close)
	return c, nil
}

// Close frees the configuration; later calls fail with StatusNullPointer.
// Closing twice is harmless.
func (c *Config) Close() error {
	if c != nil && c.h != nil {
		C.moth_config_free(c.h)
		c.h = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

// with runs f on the live handle, keeping c reachable until f returned so
// that the finalizer cannot free the handle during the call.
func (c *Config) with(f func(h *C.moth_config) C.moth_status) error {
	if c == nil || c.h == nil {
		return closedError("Config")
	}
	err := call(func() C.moth_status { return f(c.h) })
	runtime.KeepAlive(c)
	return err
}

// SetJSON merges a JSON object into the configuration: keys present replace
// values, nested objects merge key by key. Unknown keys, wrong types and
// out-of-range values give StatusInvalidConfig and change nothing.
// Example: {"seed": 3, "warmup": {"budget": {"steps": 50}}}.
func (c *Config) SetJSON(json string) error {
	s, err := cString("JSON", json)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(s))
	return c.with(func(h *C.moth_config) C.moth_status { return C.moth_config_set_json(h, s) })
}

// SetInt sets an integer setting by its dotted key ("max_steps",
// "warmup.budget.steps").
func (c *Config) SetInt(key string, value int64) error {
	k, err := cString("key", key)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(k))
	return c.with(func(h *C.moth_config) C.moth_status {
		return C.moth_config_set_int(h, k, C.int64_t(value))
	})
}

// SetUint sets an unsigned integer setting (the full range of "seed").
func (c *Config) SetUint(key string, value uint64) error {
	k, err := cString("key", key)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(k))
	return c.with(func(h *C.moth_config) C.moth_status {
		return C.moth_config_set_uint(h, k, C.uint64_t(value))
	})
}

// SetFloat sets a floating-point setting ("portion", "inversion.lr").
func (c *Config) SetFloat(key string, value float64) error {
	k, err := cString("key", key)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(k))
	return c.with(func(h *C.moth_config) C.moth_status {
		return C.moth_config_set_double(h, k, C.double(value))
	})
}

// SetString sets a string setting ("method": "Moth", "Universal",
// "Pairwise", "Asymmetric"; "bounds.mode": "Fixed", "Growing").
func (c *Config) SetString(key, value string) error {
	k, err := cString("key", key)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(k))
	v, err := cString("value", value)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(v))
	return c.with(func(h *C.moth_config) C.moth_status {
		return C.moth_config_set_string(h, k, v)
	})
}

// JSON returns the complete configuration, defaults included, as a JSON
// object.
func (c *Config) JSON() (string, error) {
	if c == nil || c.h == nil {
		return "", closedError("Config")
	}
	s, err := callString(func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status {
		return C.moth_config_to_json(c.h, buf, n, needed)
	})
	runtime.KeepAlive(c)
	return s, err
}
