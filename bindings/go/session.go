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

// PhaseKind says what a session's next step does.
type PhaseKind int32

// Phase kinds (enum moth_phase_kind).
const (
	PhaseWarmup        = PhaseKind(C.MOTH_PHASE_KIND_WARMUP)
	PhaseOrthogonalize = PhaseKind(C.MOTH_PHASE_KIND_ORTHOGONALIZE)
	PhaseUniversal     = PhaseKind(C.MOTH_PHASE_KIND_UNIVERSAL)
	PhaseDone          = PhaseKind(C.MOTH_PHASE_KIND_DONE)
	// PhaseRecover: accuracy fell beyond the bound and the session hands
	// back clean batches until it is back (recover_steps).
	PhaseRecover = PhaseKind(C.MOTH_PHASE_KIND_RECOVER)
)

func (k PhaseKind) String() string {
	switch k {
	case PhaseWarmup:
		return "warmup"
	case PhaseOrthogonalize:
		return "orthogonalize"
	case PhaseUniversal:
		return "universal"
	case PhaseDone:
		return "done"
	case PhaseRecover:
		return "recover"
	}
	return fmt.Sprintf("PhaseKind(%d)", int32(k))
}

// DoneReason says why a session finished.
type DoneReason int32

// Reasons (enum moth_done_reason).
const (
	DoneNone              = DoneReason(C.MOTH_DONE_REASON_NONE)
	DoneStepBudget        = DoneReason(C.MOTH_DONE_REASON_STEP_BUDGET)
	DoneAccuracyBound     = DoneReason(C.MOTH_DONE_REASON_ACCURACY_BOUND)
	DoneRecoveryExhausted = DoneReason(C.MOTH_DONE_REASON_RECOVERY_EXHAUSTED)
)

func (r DoneReason) String() string {
	switch r {
	case DoneNone:
		return "none"
	case DoneStepBudget:
		return "step budget"
	case DoneAccuracyBound:
		return "accuracy bound"
	case DoneRecoveryExhausted:
		return "recovery exhausted"
	}
	return fmt.Sprintf("DoneReason(%d)", int32(r))
}

// Verdict is the answer to an accuracy report.
type Verdict int32

// Verdicts (enum moth_verdict).
const (
	VerdictNone        = Verdict(C.MOTH_VERDICT_NONE)
	VerdictBaseline    = Verdict(C.MOTH_VERDICT_BASELINE)
	VerdictWithinBound = Verdict(C.MOTH_VERDICT_WITHIN_BOUND)
	// VerdictExceeded means the session is now done: go back to the last
	// model that was within the bound.
	VerdictExceeded = Verdict(C.MOTH_VERDICT_EXCEEDED)
	// VerdictRecovering means the session recovers: keep training this
	// model on the clean batches it hands back, but do not keep it as good.
	VerdictRecovering = Verdict(C.MOTH_VERDICT_RECOVERING)
)

func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictBaseline:
		return "baseline"
	case VerdictWithinBound:
		return "within bound"
	case VerdictExceeded:
		return "exceeded"
	case VerdictRecovering:
		return "recovering"
	}
	return fmt.Sprintf("Verdict(%d)", int32(v))
}

// MatrixKind selects a scheduler matrix.
type MatrixKind int32

// Scheduler matrices (MOTH_MATRIX_*), each N x N for N classes.
const (
	MatrixUniv  = MatrixKind(C.MOTH_MATRIX_UNIV)  // prior scores from the warm-up
	MatrixSize  = MatrixKind(C.MOTH_MATRIX_SIZE)  // latest period-averaged trigger size per direction
	MatrixDiff  = MatrixKind(C.MOTH_MATRIX_DIFF)  // post-selection score
	MatrixCount = MatrixKind(C.MOTH_MATRIX_COUNT) // how often each pair was chosen
)

// Phase is a session phase: what its next step does.
type Phase struct {
	Kind         PhaseKind
	Target       int        // target class (warm-up, universal, orthogonalize)
	Source       int        // source class of the pair (orthogonalize only)
	StepInPeriod int        // 0-based step within the pair's period (orthogonalize only)
	DoneReason   DoneReason // DoneNone unless Kind is PhaseDone
}

// Direction is what one generated trigger did in a step.
type Direction struct {
	Victim  int64 // class whose samples were stamped; -1 for a universal trigger
	Target  int
	Size    float64 // C * sum(mask); 0 when the inversion failed
	Reached bool    // whether the inversion reached its attack-success bound
	Bound   float64 // the stamping bound the size was compared with
	Stamped int     // samples stamped with it
}

// StepReport describes one hardening step.
type StepReport struct {
	Step           uint64 // 0-based index of the step
	Phase          Phase  // the phase the step ran in
	Directions     []Direction
	InversionSteps int
	Seconds        float64 // wall time of the call
}

// AccuracyState is a session's accuracy bookkeeping.
type AccuracyState struct {
	HasBaseline bool
	Baseline    float64
	HasLast     bool
	Last        float64
	Pending     bool // a report is due before the next step
}

// Spec is the model a session is made for. The zero Spec given to
// LoadSession or SessionFromBytes accepts a checkpoint of any model.
type Spec struct {
	NumClasses int
	C, H, W    int64
}

// Session is a resumable hardening session. Safe for concurrent use:
// moth serialises calls on one session.
type Session struct {
	// mu lets Close wait for calls in flight instead of freeing the
	// handle under them.
	mu sync.RWMutex
	h  *C.moth_session
}

func newSession(h *C.moth_session) *Session {
	s := &Session{h: h}
	runtime.SetFinalizer(s, (*Session).Close)
	return s
}

// NewSession starts a session in warm-up for a model with spec.NumClasses
// classes and inputs of shape [C, H, W]. cfg is copied; nil means the
// reference defaults.
func NewSession(cfg *Config, spec Spec) (*Session, error) {
	if cfg == nil {
		def, err := NewConfig()
		if err != nil {
			return nil, err
		}
		defer def.Close()
		cfg = def
	}
	if cfg.h == nil {
		return nil, closedError("Config")
	}
	defer runtime.KeepAlive(cfg)
	var h *C.moth_session
	err := call(func() C.moth_status {
		return C.moth_session_new(cfg.h, C.size_t(spec.NumClasses),
			C.int64_t(spec.C), C.int64_t(spec.H), C.int64_t(spec.W), &h)
	})
	if err != nil {
		return nil, err
	}
	return newSession(h), nil
}

// LoadSession restores a session from a checkpoint file written by Save.
// With a non-zero spec, the checkpoint must have been made for that model
// (StatusCheckpoint otherwise, also for corrupted or truncated files).
func LoadSession(path string, spec Spec) (*Session, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	p, err := cString("path", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(p))
	var h *C.moth_session
	err = call(func() C.moth_status {
		return C.moth_session_load(p, C.size_t(spec.NumClasses),
			C.int64_t(spec.C), C.int64_t(spec.H), C.int64_t(spec.W), &h)
	})
	if err != nil {
		return nil, err
	}
	return newSession(h), nil
}

// SessionFromBytes restores a session from checkpoint bytes (ToBytes, or a
// checkpoint file's content); spec as for LoadSession. moth does not keep
// data.
func SessionFromBytes(data []byte, spec Spec) (*Session, error) {
	if err := CheckABI(); err != nil {
		return nil, err
	}
	// An empty slice has no element to point at: NULL with length 0 is
	// refused by moth as a truncated checkpoint.
	var p *C.uint8_t
	if len(data) > 0 {
		p = (*C.uint8_t)(unsafe.Pointer(&data[0]))
	}
	var h *C.moth_session
	err := call(func() C.moth_status {
		return C.moth_session_from_buffer(p, C.size_t(len(data)), C.size_t(spec.NumClasses),
			C.int64_t(spec.C), C.int64_t(spec.H), C.int64_t(spec.W), &h)
	})
	if err != nil {
		return nil, err
	}
	return newSession(h), nil
}

// Close frees the session after any call in progress. Closing twice is
// harmless.
func (s *Session) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h != nil {
		C.moth_session_free(s.h)
		s.h = nil
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

// with runs f with the handle held open; f must not take s.mu again.
func (s *Session) with(f func(h *C.moth_session) error) error {
	if s == nil {
		return closedError("Session")
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.h == nil {
		return closedError("Session")
	}
	return f(s.h)
}

// do runs one moth call on the session's handle.
func (s *Session) do(f func(h *C.moth_session) C.moth_status) error {
	return s.with(func(h *C.moth_session) error {
		return call(func() C.moth_status { return f(h) })
	})
}

// HardenTensors runs one hardening step on x ([n, C, H, W] floating-point
// pixels in [0, 1]) with labels y ([n] integers), inverting triggers on
// clf. It returns the stamped batch to train on (same device, shape and
// order as x; labels unchanged). See HardenBatch for the flow signals.
func (s *Session) HardenTensors(clf *Classifier, x, y *Tensor) (*Tensor, error) {
	xh, err := x.handle()
	if err != nil {
		return nil, err
	}
	yh, err := y.handle()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(x)
	defer runtime.KeepAlive(y)
	var out *C.moth_tensor
	err = s.with(func(sh *C.moth_session) error {
		return clf.with(func(ch *C.moth_classifier) error {
			return call(func() C.moth_status {
				return C.moth_session_harden_batch(sh, ch, xh, yh, &out)
			})
		})
	})
	if err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// HardenBatch runs one hardening step on a batch of pixels of the given
// shape ([n, C, H, W], C order, values in [0, 1]) with labels[i] the class
// of sample i. It returns the stamped pixels to train on, in the same
// order and shape, and the step's report.
//
// Two outcomes are flow signals, not failures; the session is unchanged
// and nothing was hardened:
//   - errors.Is(err, StatusAccuracyWanted): call ReportAccuracy with the
//     current model's clean accuracy, then pass the same batch again;
//   - errors.Is(err, StatusDone): the session finished (Phase says why).
//
// Failures leave the session unchanged too: StatusWrongShape (the batch
// does not match the session's input shape, or labels and batch disagree),
// StatusLabelOutOfRange, StatusInvalidValue (NaN, infinite or out-of-range
// pixels), StatusTorch, and StatusInvalidArgument when len(pixels) is not
// the product of shape.
//
// The report comes from a second call; when several goroutines harden on
// one session at once, it may describe another goroutine's step.
func (s *Session) HardenBatch(clf *Classifier, pixels []float32, shape [4]int64, labels []int64) ([]float32, StepReport, error) {
	x, err := NewTensor(pixels, shape[:], CPU)
	if err != nil {
		return nil, StepReport{}, err
	}
	defer x.Close()
	y, err := NewTensor(labels, []int64{int64(len(labels))}, CPU)
	if err != nil {
		return nil, StepReport{}, err
	}
	defer y.Close()
	stamped, err := s.HardenTensors(clf, x, y)
	if err != nil {
		return nil, StepReport{}, err
	}
	defer stamped.Close()
	out, err := TensorData[float32](stamped)
	if err != nil {
		return nil, StepReport{}, err
	}
	report, err := s.LastReport()
	if err != nil {
		return nil, StepReport{}, err
	}
	return out, report, nil
}

// LastReport returns the report of the last successful hardening step on
// this Session value; StatusPhase when none ran since it was created or
// loaded.
func (s *Session) LastReport() (StepReport, error) {
	var r C.moth_step_report
	if err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_last_report(h, &r) }); err != nil {
		return StepReport{}, err
	}
	report := StepReport{
		Step:           uint64(r.step),
		Phase:          phaseFromC(&r.phase),
		InversionSteps: int(r.inversion_steps),
		Seconds:        float64(r.seconds),
	}
	n := int(r.num_directions)
	if n > MaxDirections {
		n = MaxDirections
	}
	for i := 0; i < n; i++ {
		d := &r.directions[i]
		report.Directions = append(report.Directions, Direction{
			Victim:  int64(d.victim),
			Target:  int(d.target),
			Size:    float64(d.size),
			Reached: bool(d.reached),
			Bound:   float64(d.bound),
			Stamped: int(d.stamped),
		})
	}
	return report, nil
}

func phaseFromC(p *C.moth_phase) Phase {
	return Phase{
		Kind:         PhaseKind(p.kind),
		Target:       int(p.target),
		Source:       int(p.source),
		StepInPeriod: int(p.step_in_period),
		DoneReason:   DoneReason(p.done_reason),
	}
}

// WantsAccuracy reports whether a clean-accuracy report is due before the
// next step (always before the first step when accuracy_every > 0: the
// baseline).
func (s *Session) WantsAccuracy() (bool, error) {
	var out C.bool
	err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_wants_accuracy(h, &out) })
	return bool(out), err
}

// ReportAccuracy reports the clean accuracy (in [0, 1]) of the caller's
// current model when one is due. The first report is the baseline; drop is
// the baseline minus accuracy. VerdictExceeded means the session is now
// done: go back to the last model that was within the bound. StatusPhase
// when no report is due, StatusInvalidValue for an accuracy outside [0, 1].
func (s *Session) ReportAccuracy(accuracy float64) (verdict Verdict, drop float64, err error) {
	var v C.moth_verdict
	var d C.double
	err = s.do(func(h *C.moth_session) C.moth_status {
		return C.moth_session_report_accuracy(h, C.double(accuracy), &v, &d)
	})
	return Verdict(v), float64(d), err
}

// Phase returns what the next step will do.
func (s *Session) Phase() (Phase, error) {
	var p C.moth_phase
	if err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_phase(h, &p) }); err != nil {
		return Phase{}, err
	}
	return phaseFromC(&p), nil
}

// Step returns the number of steps completed.
func (s *Session) Step() (uint64, error) {
	var out C.uint64_t
	err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_step(h, &out) })
	return uint64(out), err
}

// IsDone reports whether the session finished.
func (s *Session) IsDone() (bool, error) {
	var out C.bool
	err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_is_done(h, &out) })
	return bool(out), err
}

// Accuracy returns the accuracy bookkeeping.
func (s *Session) Accuracy() (AccuracyState, error) {
	var a C.moth_accuracy
	if err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_accuracy(h, &a) }); err != nil {
		return AccuracyState{}, err
	}
	return AccuracyState{
		HasBaseline: bool(a.has_baseline),
		Baseline:    float64(a.baseline),
		HasLast:     bool(a.has_last),
		Last:        float64(a.last),
		Pending:     bool(a.pending),
	}, nil
}

// Spec returns the model description the session was made for.
func (s *Session) Spec() (Spec, error) {
	var sp C.moth_spec
	if err := s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_spec(h, &sp) }); err != nil {
		return Spec{}, err
	}
	return Spec{NumClasses: int(sp.num_classes), C: int64(sp.c), H: int64(sp.h), W: int64(sp.w)}, nil
}

// ConfigJSON returns the session's configuration as JSON (the Config.JSON
// form).
func (s *Session) ConfigJSON() (string, error) {
	var out string
	err := s.with(func(h *C.moth_session) error {
		var err error
		out, err = callString(func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status {
			return C.moth_session_config_json(h, buf, n, needed)
		})
		return err
	})
	return out, err
}

// Matrix returns one N x N scheduler matrix (N classes), row-major:
// m[i*N+j] is the entry of row i, column j.
func (s *Session) Matrix(which MatrixKind) ([]float64, error) {
	spec, err := s.Spec()
	if err != nil {
		return nil, err
	}
	n := spec.NumClasses * spec.NumClasses
	if n == 0 {
		return nil, nil
	}
	out := make([]float64, n)
	err = s.do(func(h *C.moth_session) C.moth_status {
		return C.moth_session_matrix(h, C.moth_matrix_kind(which), (*C.double)(unsafe.Pointer(&out[0])), C.size_t(n))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LastError returns the message moth stored on the session for its last
// call that did not succeed (empty when none). The errors this package
// returns already carry their message; this is for logging after the fact.
func (s *Session) LastError() (string, error) {
	var out string
	err := s.with(func(h *C.moth_session) error {
		var err error
		out, err = callString(func(buf *C.char, n C.size_t, needed *C.size_t) C.moth_status {
			return C.moth_session_last_error(h, buf, n, needed)
		})
		return err
	})
	return out, err
}

// Save writes the session to a checkpoint file at path, atomically. The
// model and optimiser are the caller's to save.
func (s *Session) Save(path string) error {
	p, err := cString("path", path)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(p))
	return s.do(func(h *C.moth_session) C.moth_status { return C.moth_session_save(h, p) })
}

// ToBytes serialises the session: the bytes of a checkpoint file.
func (s *Session) ToBytes() ([]byte, error) {
	var out []byte
	err := s.with(func(h *C.moth_session) error {
		var buf *C.moth_buffer
		if err := call(func() C.moth_status { return C.moth_session_to_buffer(h, &buf) }); err != nil {
			return err
		}
		defer C.moth_buffer_free(buf)
		var data *C.uint8_t
		var n C.size_t
		if err := call(func() C.moth_status { return C.moth_buffer_data(buf, &data, &n) }); err != nil {
			return err
		}
		// Copied into Go memory: the bytes die with the buffer.
		out = append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n))...)
		return nil
	})
	return out, err
}

// SetCUDAStream runs the session's hardening calls on stream (a
// cudaStream_t from the CUDA library your trainer uses) of CUDA device
// device: moth makes it current for each call and restores the previous
// stream afterwards. nil clears it (calls then use the thread's current
// stream, the default one for Go programs). The stream must outlive its use
// by the session, and it is not saved in checkpoints. In a process without
// CUDA this returns StatusUnsupported and changes nothing.
func (s *Session) SetCUDAStream(device int, stream unsafe.Pointer) error {
	return s.do(func(h *C.moth_session) C.moth_status {
		return C.moth_session_set_cuda_stream(h, C.int32_t(device), stream)
	})
}

// CUDAStream returns the device and stream set with SetCUDAStream, or -1
// and nil when none is set.
func (s *Session) CUDAStream() (int, unsafe.Pointer, error) {
	var device C.int32_t
	var stream unsafe.Pointer
	err := s.do(func(h *C.moth_session) C.moth_status {
		return C.moth_session_cuda_stream(h, &device, &stream)
	})
	return int(device), stream, err
}
