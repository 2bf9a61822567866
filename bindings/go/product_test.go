package moth_test

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moth"
)

// The twin network of tests/native/twin.rs: logits = W2 tanh(W1 x + b1) +
// b2 on 1 x twinSide x twinSide inputs, traced to TorchScript there
// (mlp.pt), its weights in weights.f32 (W1, b1, W2, b2 row-major), with
// twinPerClass random images per class (images.f32, labels.i64), all in
// the folder MOTH_TEST_TWIN names.
const (
	twinSide     = 6
	twinHidden   = 12
	twinClasses  = 4
	twinPerClass = 10
)

func twinDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MOTH_TEST_TWIN")
	if dir == "" {
		t.Skip("MOTH_TEST_TWIN is not set (the twin network's folder)")
	}
	return dir
}

func readFloats(t *testing.T, path string, n int) []float32 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil || len(raw) != 4*n {
		t.Fatalf("%s: %d bytes, %v (want %d floats)", path, len(raw), err, n)
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return v
}

// goTwin is the twin network in Go, with its input gradient by hand.
type goTwin struct {
	w1, b1, w2, b2 []float32
	grads          int
}

func (m *goTwin) hidden(x []float32) []float64 {
	in := len(x)
	h := make([]float64, twinHidden)
	for j := range h {
		a := float64(m.b1[j])
		for i := 0; i < in; i++ {
			a += float64(m.w1[j*in+i]) * float64(x[i])
		}
		h[j] = math.Tanh(a)
	}
	return h
}

func (m *goTwin) Forward(x []float32, shape [4]int, logits []float32) error {
	in := shape[1] * shape[2] * shape[3]
	if in != twinSide*twinSide {
		return errors.New("wrong input shape")
	}
	for s := 0; s < shape[0]; s++ {
		h := m.hidden(x[s*in : (s+1)*in])
		for k := 0; k < twinClasses; k++ {
			z := float64(m.b2[k])
			for j, v := range h {
				z += float64(m.w2[k*twinHidden+j]) * v
			}
			logits[s*twinClasses+k] = float32(z)
		}
	}
	return nil
}

func (m *goTwin) InputGrad(x []float32, shape [4]int, g, gx []float32) error {
	m.grads++
	in := shape[1] * shape[2] * shape[3]
	for s := 0; s < shape[0]; s++ {
		h := m.hidden(x[s*in : (s+1)*in])
		da := make([]float64, twinHidden)
		for j := range da {
			dh := 0.0
			for k := 0; k < twinClasses; k++ {
				dh += float64(m.w2[k*twinHidden+j]) * float64(g[s*twinClasses+k])
			}
			da[j] = dh * (1 - h[j]*h[j])
		}
		for i := 0; i < in; i++ {
			d := 0.0
			for j, v := range da {
				d += float64(m.w1[j*in+i]) * v
			}
			gx[s*in+i] = float32(d)
		}
	}
	return nil
}

func TestDistancesOfAGoModelEqualItsTorchScriptTwin(t *testing.T) {
	dir := twinDir(t)
	in := twinSide * twinSide
	w := readFloats(t, filepath.Join(dir, "weights.f32"), twinHidden*in+twinHidden+twinClasses*twinHidden+twinClasses)
	net := &goTwin{w1: w[:twinHidden*in], b1: w[twinHidden*in : twinHidden*in+twinHidden]}
	rest := w[twinHidden*in+twinHidden:]
	net.w2, net.b2 = rest[:twinClasses*twinHidden], rest[twinClasses*twinHidden:]
	n := twinClasses * twinPerClass
	images := readFloats(t, filepath.Join(dir, "images.f32"), n*in)
	labels := make([]int64, n)
	for i := range labels {
		labels[i] = int64(i % twinClasses)
	}
	script, err := moth.LoadTorchScript(filepath.Join(dir, "mlp.pt"), 1, twinSide, twinSide, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer script.Close()
	host, err := moth.NewHostClassifier(net, twinClasses)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	cfg, err := moth.NewDistanceConfig("quick")
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	if err := cfg.SetSamples(8); err != nil {
		t.Fatal(err)
	}
	if err := cfg.SetSteps(30); err != nil {
		t.Fatal(err)
	}
	shape := [4]int64{int64(n), 1, twinSide, twinSide}
	a, err := moth.MeasureDistances(script, cfg, images, shape, labels, twinClasses, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := moth.MeasureDistances(host, cfg, images, shape, labels, twinClasses, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if net.grads == 0 {
		t.Fatal("the Go model's input gradient was never asked for")
	}
	measured := 0
	for i, v := range a.Values {
		if (v > 0) != (b.Values[i] > 0) || math.Abs(v-b.Values[i]) > 1e-3*math.Max(v, 1e-9) {
			t.Fatalf("distance %d: TorchScript %v, Go model %v", i, v, b.Values[i])
		}
		if v > 0 {
			measured++
		}
	}
	if measured < twinClasses {
		t.Fatalf("only %d directions measured: %v", measured, a.Values)
	}
	for pair, ta := range a.Triggers {
		tb, ok := b.Triggers[pair]
		if !ok {
			t.Fatalf("trigger %v found for TorchScript only", pair)
		}
		for i := range ta.Mask {
			if math.Abs(float64(ta.Mask[i]-tb.Mask[i])) > 1e-2 {
				t.Fatalf("trigger %v mask %d: %v vs %v", pair, i, ta.Mask[i], tb.Mask[i])
			}
		}
	}
	if !strings.Contains(a.JSON, `"values"`) {
		t.Fatalf("result JSON: %s", a.JSON)
	}

	// A callback error reaches the caller with its message.
	bad, err := moth.NewHostClassifier(failing{}, twinClasses)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_, err = moth.MeasureDistances(bad, cfg, images, shape, labels, twinClasses, nil, nil)
	if !errors.Is(err, moth.StatusCallback) || !strings.Contains(err.Error(), "no forward today") {
		t.Fatalf("failing model: %v", err)
	}
}

type failing struct{}

func (failing) Forward([]float32, [4]int, []float32) error { return errors.New("no forward today") }
func (failing) InputGrad([]float32, [4]int, []float32, []float32) error {
	return errors.New("no gradient")
}

func TestDistanceProtocolProgressPairsAndCancel(t *testing.T) {
	clf := model(t)
	cfg, err := moth.NewDistanceConfig("paper")
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	if _, err := moth.NewDistanceConfig("fast"); !errors.Is(err, moth.StatusInvalidConfig) {
		t.Fatalf("unknown preset: %v", err)
	}
	if err := cfg.SetSeeds(); !errors.Is(err, moth.StatusInvalidConfig) {
		t.Fatalf("no seed: %v", err)
	}
	for _, set := range []func() error{
		func() error { return cfg.SetSamples(4) },
		func() error { return cfg.SetSteps(3) },
		func() error { return cfg.SetSeeds(7) },
		func() error { return cfg.SetInitCost(0.01) },
		func() error { return cfg.SetASRBound(0.5) },
		func() error { return cfg.SetJSON(`{"inversion": {"lr": 0.05}}`) },
	} {
		if err := set(); err != nil {
			t.Fatal(err)
		}
	}
	js, err := cfg.JSON()
	if err != nil || !strings.Contains(js, `"seeds":[7]`) || !strings.Contains(js, `"lr":0.05`) {
		t.Fatalf("protocol %s, %v", js, err)
	}
	pixels, shape, labels := batch(3, 40)
	calls := 0
	_, err = moth.MeasureDistances(clf, cfg, pixels, shape, labels, classes, nil, func(done, total int) bool {
		calls++
		return false
	})
	if !errors.Is(err, moth.StatusCancelled) || calls != 1 {
		t.Fatalf("cancel: %v after %d calls", err, calls)
	}
	d, err := moth.MeasureDistances(clf, cfg, pixels, shape, labels, classes, [][2]int{{0, 1}, {3, 2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range d.Values {
		if v != 0 && i != 0*classes+1 && i != 3*classes+2 {
			t.Fatalf("pair %d was not chosen but reads %v", i, v)
		}
	}
	if _, err := moth.MeasureDistances(clf, cfg, pixels, shape, labels, classes, [][2]int{{4, 4}}, nil); !errors.Is(err, moth.StatusInvalidInput) {
		t.Fatalf("a pair of one class: %v", err)
	}
}

// trainRun hardens and trains from the session's step to `to`, on batches
// that depend on the step only.
func trainRun(t *testing.T, s *moth.Session, clf *moth.Classifier, tr *moth.Trainer, to int) {
	t.Helper()
	for {
		step, err := s.Step()
		if err != nil {
			t.Fatal(err)
		}
		if int(step) >= to {
			return
		}
		x, shape, y := batch(int64(1000+step), 16)
		stamped, _, err := s.HardenBatch(clf, x, shape, y)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(stamped, shape, y); err != nil {
			t.Fatal(err)
		}
	}
}

// trainable loads the TorchScript classifier with module parameters that
// tests/go_binding.rs names in MOTH_TEST_TRAINABLE (a traced model's
// weights are constants, which no optimiser can train).
func trainable(t *testing.T) *moth.Classifier {
	t.Helper()
	path := os.Getenv("MOTH_TEST_TRAINABLE")
	if path == "" {
		t.Skip("MOTH_TEST_TRAINABLE is not set (a trainable TorchScript model, 1x28x28 -> 10 classes)")
	}
	clf, err := moth.LoadTorchScript(path, 1, side, side, moth.CPU)
	if err != nil {
		t.Fatalf("loading %s: %v", path, err)
	}
	t.Cleanup(func() { clf.Close() })
	return clf
}

func TestTrainerCheckpointResumeIsBitExact(t *testing.T) {
	clf := trainable(t)
	if _, err := moth.NewTrainer(clf, "rmsprop"); !errors.Is(err, moth.StatusInvalidConfig) {
		t.Fatalf("unknown optimiser: %v", err)
	}
	tr, err := moth.NewTrainer(clf, `{"kind":{"Sgd":{"momentum":0.9,"nesterov":true}},"lr":0.01,"weight_decay":0}`)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	x, shape, y := batch(1, 8)
	if _, err := tr.Step(x, shape, append(y[:7:7], 10)); !errors.Is(err, moth.StatusLabelOutOfRange) {
		t.Fatalf("label 10: %v", err)
	}
	if n, _ := tr.Steps(); n != 0 {
		t.Fatalf("a refused step counted: %d", n)
	}
	ref := newSession(t, quickConfig(t, ""))
	trainRun(t, ref, clf, tr, 11)
	sessionBytes := checkpoint(t, ref)
	file := filepath.Join(t.TempDir(), "trainer.ckpt")
	if err := tr.Save(file); err != nil {
		t.Fatal(err)
	}
	trainRun(t, ref, clf, tr, 14)

	other := trainable(t)
	resumed, err := moth.LoadTrainer(other, file)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	if n, _ := resumed.Steps(); n != 11 {
		t.Fatalf("resumed trainer at step %d", n)
	}
	s, err := moth.SessionFromBytes(sessionBytes, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	trainRun(t, s, other, resumed, 14)
	probe, probeShape, _ := batch(99, 20)
	a, _, err := clf.Forward(probe, probeShape)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := other.Forward(probe, probeShape)
	if err != nil {
		t.Fatal(err)
	}
	changed := false
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("logit %d: uninterrupted %v, resumed %v", i, a[i], b[i])
		}
	}
	fresh := trainable(t)
	c, _, _ := fresh.Forward(probe, probeShape)
	for i := range a {
		changed = changed || a[i] != c[i]
	}
	if !changed {
		t.Fatal("training left the model unchanged")
	}
	if _, err := moth.LoadTrainer(other, filepath.Join(t.TempDir(), "none.ckpt")); !errors.Is(err, moth.StatusIO) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := moth.TrainerFromBytes(other, sessionBytes); !errors.Is(err, moth.StatusCheckpoint) {
		t.Fatalf("a session checkpoint as a trainer's: %v", err)
	}
}
