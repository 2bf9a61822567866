package moth_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"moth"
)

// The model tests need a TorchScript classifier for [n, 1, 28, 28] pixels
// in [0, 1] with 10 classes; tests/go_binding.rs makes one and sets
// MOTH_TEST_MODEL. Without it those tests skip, and that Rust test fails if
// any did.
const (
	side    = 28
	classes = 10
)

var spec = moth.Spec{NumClasses: classes, C: 1, H: side, W: side}

func model(t *testing.T) *moth.Classifier {
	t.Helper()
	path := os.Getenv("MOTH_TEST_MODEL")
	if path == "" {
		t.Skip("MOTH_TEST_MODEL is not set (a TorchScript model, 1x28x28 -> 10 classes)")
	}
	clf, err := moth.LoadTorchScript(path, 1, side, side, moth.CPU)
	if err != nil {
		t.Fatalf("loading %s: %v", path, err)
	}
	t.Cleanup(func() { clf.Close() })
	return clf
}

// quickConfig keeps inversions to a few passes so that a step takes tens of
// milliseconds on a CPU. The fixed cap is the whole image: on the
// synthetic images below the triggers are large, and a smaller cap would
// stamp nothing, leaving the stamped batches equal to the inputs (which
// would make the bit-exact resume check vacuous).
func quickConfig(t *testing.T, extra string) *moth.Config {
	t.Helper()
	cfg, err := moth.NewConfig()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.Close() })
	base := `{"seed": 5, "accuracy_every": 0, "portion": 0.5, "period": 2,
		"warmup": {"budget": {"steps": 6}, "pool_per_class": 2},
		"first": {"steps": 6}, "later": {"steps": 3},
		"bounds": {"cap_fraction": 1.0}}`
	for _, js := range []string{base, extra} {
		if js == "" {
			continue
		}
		if err := cfg.SetJSON(js); err != nil {
			t.Fatalf("config %s: %v", js, err)
		}
	}
	return cfg
}

func newSession(t *testing.T, cfg *moth.Config) *moth.Session {
	t.Helper()
	s, err := moth.NewSession(cfg, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// batch makes n Fashion-MNIST-shaped images, labels cycling through the
// classes: dim noise plus a bright band whose position depends on the
// class, so that classes differ. The same seed gives the same batch.
func batch(seed int64, n int) ([]float32, [4]int64, []int64) {
	r := rand.New(rand.NewSource(seed))
	px := make([]float32, n*side*side)
	labels := make([]int64, n)
	for i := 0; i < n; i++ {
		k := i % classes
		labels[i] = int64(k)
		img := px[i*side*side : (i+1)*side*side]
		for p := range img {
			img[p] = 0.3 * r.Float32()
		}
		for row := 2 * k; row < 2*k+4 && row < side; row++ {
			for col := 4; col < 24; col++ {
				img[row*side+col] = 0.7 + 0.3*r.Float32()
			}
		}
	}
	return px, [4]int64{int64(n), 1, side, side}, labels
}

func step(t *testing.T, s *moth.Session) uint64 {
	t.Helper()
	n, err := s.Step()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func phase(t *testing.T, s *moth.Session) moth.Phase {
	t.Helper()
	p, err := s.Phase()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func checkpoint(t *testing.T, s *moth.Session) []byte {
	t.Helper()
	b, err := s.ToBytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantStatus checks that err is a moth *Error with status want, reachable
// through errors.Is and errors.As, and with a message.
func wantStatus(t *testing.T, what string, err error, want moth.Status) *moth.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %v", what, want)
	}
	var me *moth.Error
	if !errors.As(err, &me) {
		t.Fatalf("%s: %T %v is not a *moth.Error", what, err, err)
	}
	var st moth.Status
	if !errors.As(err, &st) || st != want || !errors.Is(err, want) || me.Status != want {
		t.Fatalf("%s: status %v (%v), want %v", what, me.Status, err, want)
	}
	if me.Message == "" {
		t.Fatalf("%s: %v has no message", what, want)
	}
	return me
}

func mustTensor(t *testing.T) func(*moth.Tensor, error) *moth.Tensor {
	return func(x *moth.Tensor, err error) *moth.Tensor {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
}

func TestVersionAndABI(t *testing.T) {
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(moth.Version()) {
		t.Fatalf("version %q", moth.Version())
	}
	if moth.ABIVersion() != moth.HeaderABIVersion {
		t.Fatalf("library ABI %d, header ABI %d", moth.ABIVersion(), moth.HeaderABIVersion)
	}
	if err := moth.CheckABI(); err != nil {
		t.Fatal(err)
	}
}

func TestStatusNamesAndKinds(t *testing.T) {
	cases := map[moth.Status]string{
		moth.StatusOK:              "MOTH_STATUS_OK",
		moth.StatusAccuracyWanted:  "MOTH_STATUS_ACCURACY_WANTED",
		moth.StatusLabelOutOfRange: "MOTH_STATUS_LABEL_OUT_OF_RANGE",
		moth.StatusUnsupported:     "MOTH_STATUS_UNSUPPORTED",
		moth.Status(1234):          "MOTH_STATUS_UNKNOWN",
	}
	for st, name := range cases {
		if st.String() != name || st.Error() != name {
			t.Errorf("%d is %q, want %q", int32(st), st.String(), name)
		}
	}
	if !moth.StatusDone.IsFlowSignal() || moth.StatusDone.IsFailure() ||
		!moth.StatusPhase.IsFailure() || moth.StatusOK.IsFlowSignal() || moth.StatusOK.IsFailure() {
		t.Fatal("flow signal / failure classification")
	}
	wrapped := fmt.Errorf("step 3: %w", &moth.Error{Status: moth.StatusTorch, Message: "m"})
	if !errors.Is(wrapped, moth.StatusTorch) || errors.Is(wrapped, moth.StatusIO) {
		t.Fatal("errors.Is through wrapping")
	}
}

func configMap(t *testing.T, c *moth.Config) map[string]any {
	t.Helper()
	js, err := c.JSON()
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(strings.NewReader(js))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("config JSON %q: %v", js, err)
	}
	return m
}

func TestConfig(t *testing.T) {
	c, err := moth.NewConfig()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := configMap(t, c)
	if m["method"] != "Moth" || m["max_steps"].(json.Number) != "0" {
		t.Fatalf("defaults: %v", m)
	}
	if err := c.SetInt("max_steps", 7); err != nil {
		t.Fatal(err)
	}
	const seed = uint64(1)<<63 + 5 // beyond int64: needs SetUint
	if err := c.SetUint("seed", seed); err != nil {
		t.Fatal(err)
	}
	if err := c.SetFloat("portion", 0.25); err != nil {
		t.Fatal(err)
	}
	if err := c.SetString("method", "Universal"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetJSON(`{"warmup": {"budget": {"steps": 3}}}`); err != nil {
		t.Fatal(err)
	}
	m = configMap(t, c)
	warmup := m["warmup"].(map[string]any)
	if m["max_steps"].(json.Number) != "7" || m["seed"].(json.Number) != json.Number(fmt.Sprint(seed)) ||
		m["portion"].(json.Number) != "0.25" || m["method"] != "Universal" ||
		warmup["budget"].(map[string]any)["steps"].(json.Number) != "3" ||
		warmup["pool_per_class"].(json.Number) != "10" {
		t.Fatalf("after setting: %v", m)
	}

	before, _ := c.JSON()
	wantStatus(t, "unknown key", c.SetInt("no_such_key", 1), moth.StatusInvalidConfig)
	wantStatus(t, "wrong type", c.SetString("seed", "three"), moth.StatusInvalidConfig)
	wantStatus(t, "out of range", c.SetFloat("portion", 2), moth.StatusInvalidConfig)
	wantStatus(t, "bad JSON", c.SetJSON(`{"seed": `), moth.StatusInvalidConfig)
	e := wantStatus(t, "unknown nested key", c.SetJSON(`{"seed": 9, "warmup": {"nope": 1}}`), moth.StatusInvalidConfig)
	if !strings.Contains(e.Message, "nope") {
		t.Errorf("message %q does not name the key", e.Message)
	}
	if after, _ := c.JSON(); after != before {
		t.Fatalf("a refused setting changed the config:\n%s\n%s", before, after)
	}

	c.Close()
	c.Close()
	wantStatus(t, "closed config", c.SetInt("seed", 1), moth.StatusNullPointer)
	_, err = c.JSON()
	wantStatus(t, "closed config JSON", err, moth.StatusNullPointer)
}

func TestTensors(t *testing.T) {
	data := []float32{0, 0.5, 1, 1.5, -2, 3}
	x, err := moth.NewTensor(data, []int64{2, 3}, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	shape, err := x.Shape()
	if err != nil || fmt.Sprint(shape) != "[2 3]" {
		t.Fatalf("shape %v %v", shape, err)
	}
	if dt, err := x.DType(); err != nil || dt != moth.Float32 {
		t.Fatalf("dtype %v %v", dt, err)
	}
	if dev, err := x.Device(); err != nil || dev != moth.CPU {
		t.Fatalf("device %v %v", dev, err)
	}
	back, err := moth.TensorData[float32](x)
	if err != nil || fmt.Sprint(back) != fmt.Sprint(data) {
		t.Fatalf("round trip %v %v", back, err)
	}
	_, err = moth.TensorData[int64](x)
	wantStatus(t, "reading float32 as int64", err, moth.StatusWrongDtype)

	labels, err := moth.NewTensor([]int64{3, -1, 1 << 40}, []int64{3}, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer labels.Close()
	if got, err := moth.TensorData[int64](labels); err != nil || fmt.Sprint(got) != "[3 -1 1099511627776]" {
		t.Fatalf("int64 round trip %v %v", got, err)
	}
	bytes, err := moth.NewTensor([]uint8{0, 255}, []int64{1, 2, 1}, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := moth.TensorData[uint8](bytes); err != nil || fmt.Sprint(got) != "[0 255]" {
		t.Fatalf("uint8 round trip %v %v", got, err)
	}
	bytes.Close()
	empty, err := moth.NewTensor([]float64{}, []int64{0, 3}, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := moth.TensorData[float64](empty); err != nil || len(got) != 0 {
		t.Fatalf("empty %v %v", got, err)
	}
	empty.Close()

	_, err = moth.NewTensor(data, []int64{2, 2}, moth.CPU)
	wantStatus(t, "slice longer than shape", err, moth.StatusInvalidArgument)
	_, err = moth.NewTensor(data, []int64{-2, -3}, moth.CPU)
	wantStatus(t, "negative dimension", err, moth.StatusInvalidArgument)
	_, err = moth.NewTensor(data, []int64{6}, moth.Device{Type: 7})
	wantStatus(t, "unknown device type", err, moth.StatusInvalidArgument)

	x.Close()
	_, err = x.Shape()
	wantStatus(t, "closed tensor", err, moth.StatusNullPointer)
}

func TestLoadTorchScriptFailures(t *testing.T) {
	dir := t.TempDir()
	_, err := moth.LoadTorchScript(filepath.Join(dir, "missing.pt"), 1, side, side, moth.CPU)
	if err == nil {
		t.Fatal("a missing file loaded")
	}
	wantStatus(t, "missing file", err, moth.StatusIO)
	if strings.Contains(err.Error(), "frame #") {
		t.Fatalf("the message carries a C++ backtrace: %v", err)
	}
	junk := filepath.Join(dir, "junk.pt")
	if err := os.WriteFile(junk, []byte("not a TorchScript archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = moth.LoadTorchScript(junk, 1, side, side, moth.CPU)
	wantStatus(t, "junk file", err, moth.StatusFormat)
	if strings.Contains(err.Error(), "Exception raised from") {
		t.Fatalf("the message carries a C++ backtrace: %v", err)
	}
	_, err = moth.LoadTorchScript(junk, 0, side, side, moth.CPU)
	wantStatus(t, "zero channels", err, moth.StatusInvalidArgument)
}

func accuracy(t *testing.T, clf *moth.Classifier, px []float32, shape [4]int64, labels []int64) float64 {
	t.Helper()
	logits, k, err := clf.Forward(px, shape)
	if err != nil {
		t.Fatal(err)
	}
	if k != classes || len(logits) != len(labels)*classes {
		t.Fatalf("logits: %d classes, %d values for %d samples", k, len(logits), len(labels))
	}
	right := 0
	for i, y := range labels {
		best := 0
		for c := 1; c < k; c++ {
			if logits[i*k+c] > logits[i*k+best] {
				best = c
			}
		}
		if int64(best) == y {
			right++
		}
	}
	return float64(right) / float64(len(labels))
}

func TestClassifierForwardSaveAndReload(t *testing.T) {
	clf := model(t)
	px, shape, labels := batch(1, 20)
	first, _, err := clf.Forward(px, shape)
	if err != nil {
		t.Fatal(err)
	}
	acc := accuracy(t, clf, px, shape, labels)
	if acc < 0 || acc > 1 {
		t.Fatalf("accuracy %v", acc)
	}
	if err := clf.SetTrain(false); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(t.TempDir(), "model.pt")
	if err := clf.Save(saved); err != nil {
		t.Fatal(err)
	}
	again, err := moth.LoadTorchScript(saved, 1, side, side, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	second, _, err := again.Forward(px, shape)
	if err != nil {
		t.Fatal(err)
	}
	for i := range first {
		if math.Float32bits(first[i]) != math.Float32bits(second[i]) {
			t.Fatalf("logit %d: %v before saving, %v after reloading", i, first[i], second[i])
		}
	}
	_, _, err = clf.Forward(px[:side*side], [4]int64{1, 1, side, side - 1})
	wantStatus(t, "forward with a short slice", err, moth.StatusInvalidArgument)
}

func TestHardenBatchAdvancesAndEndsAtTheStepBudget(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, `{"max_steps": 3}`))
	if sp, err := s.Spec(); err != nil || sp != spec {
		t.Fatalf("spec %+v %v", sp, err)
	}
	_, err := s.LastReport()
	wantStatus(t, "report before any step", err, moth.StatusPhase)
	for i := uint64(0); i < 3; i++ {
		if got := step(t, s); got != i {
			t.Fatalf("step %d before hardening batch %d", got, i)
		}
		p := phase(t, s)
		if p.Kind != moth.PhaseWarmup || p.Target != int(i) {
			t.Fatalf("phase before step %d: %+v", i, p)
		}
		px, shape, labels := batch(int64(i), 40)
		out, report, err := s.HardenBatch(clf, px, shape, labels)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if len(out) != len(px) {
			t.Fatalf("stamped batch has %d values, want %d", len(out), len(px))
		}
		changed := 0
		for j, v := range out {
			if v < 0 || v > 1 || math.IsNaN(float64(v)) {
				t.Fatalf("stamped pixel %d is %v", j, v)
			}
			if v != px[j] {
				changed++
			}
		}
		if report.Step != i || report.Phase != p || len(report.Directions) != 1 {
			t.Fatalf("report %+v", report)
		}
		d := report.Directions[0]
		if d.Victim != -1 || d.Target != int(i) || report.InversionSteps == 0 || report.Seconds <= 0 {
			t.Fatalf("warm-up direction %+v in %+v", d, report)
		}
		if d.Stamped > 0 && changed == 0 {
			t.Fatalf("%d samples stamped but no pixel changed", d.Stamped)
		}
		if last, err := s.LastReport(); err != nil || last.Step != i {
			t.Fatalf("last report %+v %v", last, err)
		}
	}
	if step(t, s) != 3 {
		t.Fatal("step counter after 3 steps")
	}
	done, err := s.IsDone()
	if err != nil || !done {
		t.Fatalf("done after max_steps: %v %v", done, err)
	}
	if p := phase(t, s); p.Kind != moth.PhaseDone || p.DoneReason != moth.DoneStepBudget {
		t.Fatalf("phase %+v", p)
	}
	px, shape, labels := batch(9, 40)
	_, _, err = s.HardenBatch(clf, px, shape, labels)
	e := wantStatus(t, "hardening after the budget", err, moth.StatusDone)
	if !e.Status.IsFlowSignal() {
		t.Fatal("done is a flow signal")
	}
	if step(t, s) != 3 {
		t.Fatal("a refused step counted")
	}
	js, err := s.ConfigJSON()
	if err != nil || !strings.Contains(js, `"max_steps":3`) {
		t.Fatalf("session config %s %v", js, err)
	}
}

func TestAccuracyProtocol(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, `{"accuracy_every": 2, "max_accuracy_drop": 0.05}`))
	px, shape, labels := batch(3, 30)
	harden := func() error {
		_, _, err := s.HardenBatch(clf, px, shape, labels)
		return err
	}

	wants, err := s.WantsAccuracy()
	if err != nil || !wants {
		t.Fatalf("a baseline must be due first: %v %v", wants, err)
	}
	e := wantStatus(t, "hardening before the baseline", harden(), moth.StatusAccuracyWanted)
	if !e.Status.IsFlowSignal() || step(t, s) != 0 {
		t.Fatal("accuracy wanted must be a flow signal that leaves the step alone")
	}
	_, _, err = s.ReportAccuracy(1.5)
	wantStatus(t, "accuracy above 1", err, moth.StatusInvalidValue)
	_, _, err = s.ReportAccuracy(math.NaN())
	wantStatus(t, "NaN accuracy", err, moth.StatusInvalidValue)

	// Fixed accuracies keep the verdicts independent of how well the model
	// does on synthetic images (Forward is tested on its own).
	const base, within, worse = 0.80, 0.78, 0.60
	v, drop, err := s.ReportAccuracy(base)
	if err != nil || v != moth.VerdictBaseline || drop != 0 {
		t.Fatalf("baseline: %v %v %v", v, drop, err)
	}
	_, _, err = s.ReportAccuracy(base)
	wantStatus(t, "a report that is not due", err, moth.StatusPhase)
	if acc, err := s.Accuracy(); err != nil || !acc.HasBaseline || acc.Baseline != base || acc.Pending {
		t.Fatalf("bookkeeping %+v %v", acc, err)
	}

	for i := 0; i < 2; i++ {
		if err := harden(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	wantStatus(t, "third step without a report", harden(), moth.StatusAccuracyWanted)
	if acc, err := s.Accuracy(); err != nil || !acc.Pending || step(t, s) != 2 {
		t.Fatalf("a report must be pending after 2 steps: %+v %v", acc, err)
	}
	v, drop, err = s.ReportAccuracy(within)
	if err != nil || v != moth.VerdictWithinBound || math.Abs(drop-(base-within)) > 1e-12 {
		t.Fatalf("within bound: %v %v %v", v, drop, err)
	}
	for i := 0; i < 2; i++ {
		if err := harden(); err != nil {
			t.Fatalf("step %d: %v", 2+i, err)
		}
	}
	v, drop, err = s.ReportAccuracy(worse)
	if err != nil || v != moth.VerdictExceeded || math.Abs(drop-(base-worse)) > 1e-12 {
		t.Fatalf("exceeded: %v %v %v", v, drop, err)
	}
	if acc, err := s.Accuracy(); err != nil || !acc.HasLast || acc.Last != worse || acc.Baseline != base {
		t.Fatalf("bookkeeping %+v %v", acc, err)
	}
	if done, err := s.IsDone(); err != nil || !done {
		t.Fatalf("exceeding the bound must end the session: %v %v", done, err)
	}
	if p := phase(t, s); p.Kind != moth.PhaseDone || p.DoneReason != moth.DoneAccuracyBound {
		t.Fatalf("phase %+v", p)
	}
	wantStatus(t, "hardening after the bound", harden(), moth.StatusDone)
	if step(t, s) != 4 {
		t.Fatal("steps after the accuracy verdicts")
	}
}

func TestFailedStepsCarryTheirStatusAndChangeNothing(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, ""))
	px, shape, labels := batch(4, 30)
	if _, _, err := s.HardenBatch(clf, px, shape, labels); err != nil {
		t.Fatal(err)
	}
	before := checkpoint(t, s)
	phaseBefore := phase(t, s)
	reportBefore, err := s.LastReport()
	if err != nil {
		t.Fatal(err)
	}

	with := func(edit func(px []float32, shape *[4]int64, labels []int64) ([]float32, []int64)) error {
		p := append([]float32(nil), px...)
		l := append([]int64(nil), labels...)
		sh := shape
		p, l = edit(p, &sh, l)
		_, _, err := s.HardenBatch(clf, p, sh, l)
		return err
	}
	cases := []struct {
		name   string
		want   moth.Status
		needle string
		edit   func(px []float32, shape *[4]int64, labels []int64) ([]float32, []int64)
	}{
		{"images of another size", moth.StatusWrongShape, "batch must be", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			*sh = [4]int64{sh[0], 1, side - 1, side + 1}
			return px[:int(sh[0])*(side-1)*(side+1)], l
		}},
		{"fewer labels than images", moth.StatusWrongShape, "labels", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			return px, l[:len(l)-1]
		}},
		{"empty batch", moth.StatusWrongShape, "empty", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			sh[0] = 0
			return nil, nil
		}},
		{"label = class count", moth.StatusLabelOutOfRange, "label 10", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			l[7] = classes
			return px, l
		}},
		{"negative label", moth.StatusLabelOutOfRange, "label -1", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			l[0] = -1
			return px, l
		}},
		{"NaN pixel", moth.StatusInvalidValue, "NaN", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			px[123] = float32(math.NaN())
			return px, l
		}},
		{"infinite pixel", moth.StatusInvalidValue, "infinite", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			px[5] = float32(math.Inf(1))
			return px, l
		}},
		{"pixel above 1", moth.StatusInvalidValue, "[0, 1]", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			px[9] = 255
			return px, l
		}},
		{"slice shorter than shape", moth.StatusInvalidArgument, "elements", func(px []float32, sh *[4]int64, l []int64) ([]float32, []int64) {
			return px[:len(px)-1], l
		}},
	}
	for _, c := range cases {
		e := wantStatus(t, c.name, with(c.edit), c.want)
		if !strings.Contains(e.Message, c.needle) {
			t.Errorf("%s: message %q lacks %q", c.name, e.Message, c.needle)
		}
		if !e.Status.IsFailure() {
			t.Errorf("%s: %v is not a failure", c.name, e.Status)
		}
		if c.want != moth.StatusInvalidArgument {
			// moth's own refusals are also stored on the session.
			if msg, err := s.LastError(); err != nil || msg != e.Message {
				t.Errorf("%s: session last error %q (%v), call said %q", c.name, msg, err, e.Message)
			}
		}
	}

	// Tensors of the wrong element type go through HardenTensors.
	x := mustTensor(t)(moth.NewTensor(make([]int64, 2*side*side), []int64{2, 1, side, side}, moth.CPU))
	y := mustTensor(t)(moth.NewTensor([]float32{0, 1}, []int64{2}, moth.CPU))
	okx := mustTensor(t)(moth.NewTensor(px[:2*side*side], []int64{2, 1, side, side}, moth.CPU))
	_, err = s.HardenTensors(clf, x, y)
	wantStatus(t, "integer pixels", err, moth.StatusWrongDtype)
	_, err = s.HardenTensors(clf, okx, y)
	wantStatus(t, "float labels", err, moth.StatusWrongDtype)
	for _, tensor := range []*moth.Tensor{x, y, okx} {
		tensor.Close()
	}
	_, err = s.HardenTensors(clf, okx, y)
	wantStatus(t, "closed tensors", err, moth.StatusNullPointer)

	_, err = s.Matrix(moth.MatrixKind(42))
	wantStatus(t, "unknown matrix", err, moth.StatusInvalidArgument)
	_, _, err = s.ReportAccuracy(0.5)
	wantStatus(t, "accuracy report with accuracy_every 0", err, moth.StatusPhase)

	if step(t, s) != 1 || phase(t, s) != phaseBefore {
		t.Fatalf("a failed call moved the session: step %d phase %+v", step(t, s), phase(t, s))
	}
	if r, err := s.LastReport(); err != nil || fmt.Sprint(r) != fmt.Sprint(reportBefore) {
		t.Fatalf("last report changed: %+v %v", r, err)
	}
	if after := checkpoint(t, s); string(after) != string(before) {
		t.Fatal("a failed call changed the session's checkpoint bytes")
	}
}

// run hardens the batches of seeds [from, to) and returns the stamped
// pixels and reports (without their wall time).
func run(t *testing.T, s *moth.Session, clf *moth.Classifier, from, to int) ([][]float32, []moth.StepReport) {
	t.Helper()
	var outs [][]float32
	var reports []moth.StepReport
	for i := from; i < to; i++ {
		px, shape, labels := batch(int64(1000+i), 40)
		out, r, err := s.HardenBatch(clf, px, shape, labels)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		r.Seconds = 0
		outs = append(outs, out)
		reports = append(reports, r)
	}
	return outs, reports
}

func sameBits(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func TestCheckpointResumeIsBitExact(t *testing.T) {
	clf := model(t)
	const cut, end = 8, 14 // warm-up is steps 0-9: the resumed run chooses pairs
	ref := newSession(t, quickConfig(t, ""))
	run(t, ref, clf, 0, cut)

	data := checkpoint(t, ref)
	file := filepath.Join(t.TempDir(), "session.ckpt")
	if err := ref.Save(file); err != nil {
		t.Fatal(err)
	}
	fromBytes, err := moth.SessionFromBytes(data, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer fromBytes.Close()
	fromFile, err := moth.LoadSession(file, moth.Spec{}) // any model
	if err != nil {
		t.Fatal(err)
	}
	defer fromFile.Close()
	if sp, err := fromFile.Spec(); err != nil || sp != spec {
		t.Fatalf("spec of the loaded session %+v %v", sp, err)
	}
	for _, s := range []*moth.Session{fromBytes, fromFile} {
		if step(t, s) != cut || phase(t, s) != phase(t, ref) {
			t.Fatalf("restored at step %d phase %+v", step(t, s), phase(t, s))
		}
		_, err := s.LastReport()
		wantStatus(t, "report of a restored session", err, moth.StatusPhase)
	}

	want, wantReports := run(t, ref, clf, cut, end)
	stamped, orthogonal, changed := 0, 0, 0
	for k, r := range wantReports {
		for _, d := range r.Directions {
			stamped += d.Stamped
		}
		if r.Phase.Kind == moth.PhaseOrthogonalize {
			orthogonal++
		}
		if px, _, _ := batch(int64(1000+cut+k), 40); sameBits(want[k], px) >= 0 {
			changed++
		}
	}
	// Otherwise the comparison below would only compare inputs with inputs.
	if stamped == 0 || orthogonal == 0 || changed == 0 {
		t.Fatalf("the resumed steps must stamp samples and orthogonalise pairs: %+v", wantReports)
	}
	for name, s := range map[string]*moth.Session{"from bytes": fromBytes, "from file": fromFile} {
		got, reports := run(t, s, clf, cut, end)
		for k := range want {
			if i := sameBits(want[k], got[k]); i >= 0 {
				t.Fatalf("%s: step %d differs from the uninterrupted run at value %d", name, cut+k, i)
			}
			if fmt.Sprint(reports[k]) != fmt.Sprint(wantReports[k]) {
				t.Fatalf("%s: step %d report\n%+v\nuninterrupted\n%+v", name, cut+k, reports[k], wantReports[k])
			}
		}
		for _, kind := range []moth.MatrixKind{moth.MatrixUniv, moth.MatrixSize, moth.MatrixDiff, moth.MatrixCount} {
			a, err1 := ref.Matrix(kind)
			b, err2 := s.Matrix(kind)
			if err1 != nil || err2 != nil || fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("%s: matrix %d differs (%v %v)", name, kind, err1, err2)
			}
		}
	}

	counts, err := ref.Matrix(moth.MatrixCount)
	if err != nil || len(counts) != classes*classes {
		t.Fatalf("count matrix %v %v", counts, err)
	}
	total := 0.0
	for i := 0; i < classes; i++ {
		for j := 0; j < classes; j++ {
			if counts[i*classes+j] != counts[j*classes+i] {
				t.Fatalf("count matrix is not symmetric at %d,%d", i, j)
			}
			total += counts[i*classes+j]
		}
	}
	if total == 0 {
		t.Fatal("no pair was counted after orthogonalisation steps")
	}
}

func TestCorruptCheckpointsAreRefused(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, ""))
	run(t, s, clf, 0, 1)
	good := checkpoint(t, s)

	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x40
	for name, data := range map[string][]byte{
		"flipped byte": flipped,
		"truncated":    good[:len(good)-17],
		"header only":  good[:12],
		"empty":        nil,
		"not moth":     []byte("PK\x03\x04 a zip file, say"),
	} {
		_, err := moth.SessionFromBytes(data, spec)
		wantStatus(t, name, err, moth.StatusCheckpoint)
	}
	_, err := moth.SessionFromBytes(good, moth.Spec{NumClasses: 3, C: 1, H: side, W: side})
	e := wantStatus(t, "another class count", err, moth.StatusCheckpoint)
	if !strings.Contains(e.Message, "3") {
		t.Errorf("message %q does not name the class count", e.Message)
	}
	_, err = moth.SessionFromBytes(good, moth.Spec{NumClasses: classes, C: 3, H: 32, W: 32})
	wantStatus(t, "another input shape", err, moth.StatusCheckpoint)

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.ckpt")
	if err := os.WriteFile(bad, flipped, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = moth.LoadSession(bad, spec)
	wantStatus(t, "corrupted file", err, moth.StatusCheckpoint)
	_, err = moth.LoadSession(filepath.Join(dir, "missing.ckpt"), spec)
	wantStatus(t, "missing file", err, moth.StatusIO)
	wantStatus(t, "saving into a missing folder", s.Save(filepath.Join(dir, "no", "such", "x.ckpt")), moth.StatusIO)

	// The refusals did not touch the session they came from.
	if after := checkpoint(t, s); string(after) != string(good) {
		t.Fatal("session changed")
	}
}

func TestWarmupFillsThePriorMatrix(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, ""))
	univ, err := s.Matrix(moth.MatrixUniv)
	if err != nil || len(univ) != classes*classes {
		t.Fatalf("prior matrix %v %v", univ, err)
	}
	for _, v := range univ {
		if v != 0 {
			t.Fatalf("prior matrix before warm-up: %v", univ)
		}
	}
	run(t, s, clf, 0, classes)
	if p := phase(t, s); p.Kind != moth.PhaseOrthogonalize || p.Source == p.Target {
		t.Fatalf("after warm-up: %+v", p)
	}
	univ, err = s.Matrix(moth.MatrixUniv)
	if err != nil {
		t.Fatal(err)
	}
	nonzero := 0
	for _, v := range univ {
		if v != 0 {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Fatalf("prior matrix after warm-up: %v", univ)
	}
}

// Goroutines sharing one session must each get the message of their own
// failed call, although the runtime moves goroutines between threads and
// the session keeps only the latest message.
func TestGoroutinesGetTheirOwnErrors(t *testing.T) {
	clf := model(t)
	s := newSession(t, quickConfig(t, ""))
	px, shape, labels := batch(7, 20)
	badLabels := append([]int64(nil), labels...)
	badLabels[3] = 99
	nan := append([]float32(nil), px...)
	nan[0] = float32(math.NaN())

	var wg sync.WaitGroup
	failures := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				var err error
				var want moth.Status
				var needle string
				switch (g + i) % 3 {
				case 0:
					_, _, err = s.HardenBatch(clf, px, shape, badLabels)
					want, needle = moth.StatusLabelOutOfRange, "label 99"
				case 1:
					_, _, err = s.HardenBatch(clf, nan, shape, labels)
					want, needle = moth.StatusInvalidValue, "NaN"
				default:
					_, _, err = s.ReportAccuracy(0.5)
					want, needle = moth.StatusPhase, "accuracy"
				}
				var me *moth.Error
				if !errors.As(err, &me) || me.Status != want || !strings.Contains(me.Message, needle) {
					failures <- fmt.Errorf("goroutine %d call %d: got %v, want %v mentioning %q", g, i, err, want, needle)
					return
				}
			}
		}(g)
	}
	// Two goroutines harden for real meanwhile; each step counts once.
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				if _, _, err := s.HardenBatch(clf, px, shape, labels); err != nil {
					failures <- fmt.Errorf("hardening goroutine %d: %v", g, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	if n := step(t, s); n != 6 {
		t.Fatalf("%d steps after 6 successful calls", n)
	}
}

func TestClosedHandlesFailCleanly(t *testing.T) {
	clf := model(t)
	s, err := moth.NewSession(nil, spec) // nil: the reference configuration
	if err != nil {
		t.Fatal(err)
	}
	js, err := s.ConfigJSON()
	if err != nil || !strings.Contains(js, `"method":"Moth"`) {
		t.Fatalf("default session config %s %v", js, err)
	}
	if wants, err := s.WantsAccuracy(); err != nil || !wants {
		t.Fatal("the reference configuration asks for a baseline first")
	}
	s.Close()
	s.Close()
	_, err = s.Step()
	wantStatus(t, "step of a closed session", err, moth.StatusNullPointer)
	_, err = s.ToBytes()
	wantStatus(t, "bytes of a closed session", err, moth.StatusNullPointer)

	other, err := moth.LoadTorchScript(os.Getenv("MOTH_TEST_MODEL"), 1, side, side, moth.CPU)
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	live := newSession(t, quickConfig(t, ""))
	px, shape, labels := batch(1, 20)
	_, _, err = live.HardenBatch(other, px, shape, labels)
	wantStatus(t, "hardening with a closed classifier", err, moth.StatusNullPointer)
	if _, _, err := live.HardenBatch(clf, px, shape, labels); err != nil {
		t.Fatal(err)
	}
	if step(t, live) != 1 {
		t.Fatal("the refused call counted")
	}
	cfg := quickConfig(t, "")
	cfg.Close()
	_, err = moth.NewSession(cfg, spec)
	wantStatus(t, "session from a closed config", err, moth.StatusNullPointer)
	_, err = moth.NewSession(quickConfig(t, ""), moth.Spec{NumClasses: 1, C: 1, H: side, W: side})
	wantStatus(t, "a one-class session", err, moth.StatusInvalidConfig)
}

// Handing moth a stream: on a machine without CUDA (CI) it is refused with
// StatusUnsupported and changes nothing; with CUDA it is kept and reported.
// Clearing it always works.
func TestCUDAStream(t *testing.T) {
	s := newSession(t, quickConfig(t, ""))
	if d, p, err := s.CUDAStream(); err != nil || d != -1 || p != nil {
		t.Fatalf("a new session has no stream: %d %v %v", d, p, err)
	}
	// Any aligned non-NULL handle: it is never used, since nothing is
	// hardened before it is cleared.
	handle := unsafe.Pointer(new(int64))
	err := s.SetCUDAStream(0, handle)
	if cudaVisible(t) {
		if err != nil {
			t.Fatalf("setting a stream with CUDA present: %v", err)
		}
		if d, p, err := s.CUDAStream(); err != nil || d != 0 || p != handle {
			t.Fatalf("the stream set is reported back: %d %v %v", d, p, err)
		}
	} else {
		wantStatus(t, "a stream without CUDA", err, moth.StatusUnsupported)
		if !strings.Contains(err.Error(), "CUDA") {
			t.Fatalf("the refusal should say why: %v", err)
		}
		if d, p, err := s.CUDAStream(); err != nil || d != -1 || p != nil {
			t.Fatalf("a refused stream must not be kept: %d %v %v", d, p, err)
		}
	}
	if err := s.SetCUDAStream(0, nil); err != nil {
		t.Fatalf("clearing the stream: %v", err)
	}
	if d, p, err := s.CUDAStream(); err != nil || d != -1 || p != nil {
		t.Fatalf("a cleared stream is gone: %d %v %v", d, p, err)
	}
}

// cudaVisible reports whether moth sees a GPU (its CUDA device type works).
func cudaVisible(t *testing.T) bool {
	t.Helper()
	clf, err := moth.LoadTorchScript(os.Getenv("MOTH_TEST_MODEL"), 1, side, side, moth.CUDA(0))
	if err == nil {
		clf.Close()
		return true
	}
	return false
}

// A string with a NUL byte would reach C cut short at it ("a\x00b" would
// name the file "a"): every path, key and value with one is refused with
// StatusInvalidArgument, and nothing is written.
func TestNULBytesAreRefused(t *testing.T) {
	dir := t.TempDir()
	cut := filepath.Join(dir, "s.ckpt")
	bad := cut + "\x00.extra"
	s := newSession(t, quickConfig(t, ""))
	e := wantStatus(t, "Save", s.Save(bad), moth.StatusInvalidArgument)
	if !strings.Contains(e.Message, "NUL byte") {
		t.Fatalf("message: %q", e.Message)
	}
	if _, err := os.Stat(cut); !os.IsNotExist(err) {
		t.Fatalf("a file was written at the truncated path: %v", err)
	}
	_, err := moth.LoadSession(bad, spec)
	wantStatus(t, "LoadSession", err, moth.StatusInvalidArgument)
	_, err = moth.LoadTorchScript(os.Getenv("MOTH_TEST_MODEL")+"\x00", 1, side, side, moth.CPU)
	wantStatus(t, "LoadTorchScript", err, moth.StatusInvalidArgument)
	clf := model(t)
	wantStatus(t, "Classifier.Save", clf.Save(filepath.Join(dir, "m.pt")+"\x00x"), moth.StatusInvalidArgument)

	cfg := quickConfig(t, "")
	before, _ := cfg.JSON()
	wantStatus(t, "SetJSON", cfg.SetJSON("{\"seed\": 9}\x00garbage"), moth.StatusInvalidArgument)
	wantStatus(t, "SetInt", cfg.SetInt("max_steps\x00x", 3), moth.StatusInvalidArgument)
	wantStatus(t, "SetUint", cfg.SetUint("seed\x00", 3), moth.StatusInvalidArgument)
	wantStatus(t, "SetFloat", cfg.SetFloat("portion\x00", 0.3), moth.StatusInvalidArgument)
	wantStatus(t, "SetString key", cfg.SetString("method\x00", "Moth"), moth.StatusInvalidArgument)
	wantStatus(t, "SetString value", cfg.SetString("method", "Universal\x00"), moth.StatusInvalidArgument)
	if after, _ := cfg.JSON(); after != before {
		t.Fatal("a refused setting changed the configuration")
	}
}

// Every method is safe on a nil receiver: Close does nothing, the others
// return StatusNullPointer (as for a closed object) instead of panicking.
func TestNilReceiversAreSafe(t *testing.T) {
	var s *moth.Session
	var c *moth.Config
	var clf *moth.Classifier
	var x *moth.Tensor
	px, shape, labels := batch(1, 4)
	calls := map[string]func() error{
		"Session.HardenTensors": func() error { _, err := s.HardenTensors(clf, x, x); return err },
		"Session.HardenBatch":   func() error { _, _, err := s.HardenBatch(clf, px, shape, labels); return err },
		"Session.LastReport":    func() error { _, err := s.LastReport(); return err },
		"Session.WantsAccuracy": func() error { _, err := s.WantsAccuracy(); return err },
		"Session.ReportAccuracy": func() error {
			_, _, err := s.ReportAccuracy(0.5)
			return err
		},
		"Session.Phase":         func() error { _, err := s.Phase(); return err },
		"Session.Step":          func() error { _, err := s.Step(); return err },
		"Session.IsDone":        func() error { _, err := s.IsDone(); return err },
		"Session.Accuracy":      func() error { _, err := s.Accuracy(); return err },
		"Session.Spec":          func() error { _, err := s.Spec(); return err },
		"Session.ConfigJSON":    func() error { _, err := s.ConfigJSON(); return err },
		"Session.Matrix":        func() error { _, err := s.Matrix(moth.MatrixUniv); return err },
		"Session.LastError":     func() error { _, err := s.LastError(); return err },
		"Session.Save":          func() error { return s.Save(filepath.Join(t.TempDir(), "s")) },
		"Session.ToBytes":       func() error { _, err := s.ToBytes(); return err },
		"Session.SetCUDAStream": func() error { return s.SetCUDAStream(0, nil) },
		"Session.CUDAStream":    func() error { _, _, err := s.CUDAStream(); return err },
		"Config.SetJSON":        func() error { return c.SetJSON("{}") },
		"Config.SetInt":         func() error { return c.SetInt("max_steps", 3) },
		"Config.SetUint":        func() error { return c.SetUint("seed", 3) },
		"Config.SetFloat":       func() error { return c.SetFloat("portion", 0.3) },
		"Config.SetString":      func() error { return c.SetString("method", "Moth") },
		"Config.JSON":           func() error { _, err := c.JSON(); return err },
		"Classifier.SetTrain":   func() error { return clf.SetTrain(true) },
		"Classifier.ForwardTensor": func() error {
			_, err := clf.ForwardTensor(x)
			return err
		},
		"Classifier.Forward": func() error { _, _, err := clf.Forward(px, shape); return err },
		"Classifier.Save":    func() error { return clf.Save(filepath.Join(t.TempDir(), "m.pt")) },
		"Tensor.Shape":       func() error { _, err := x.Shape(); return err },
		"Tensor.DType":       func() error { _, err := x.DType(); return err },
		"Tensor.Device":      func() error { _, err := x.Device(); return err },
		"TensorData":         func() error { _, err := moth.TensorData[float32](x); return err },
	}
	for name, f := range calls {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s on a nil receiver panicked: %v", name, r)
				}
			}()
			wantStatus(t, name+" on a nil receiver", f(), moth.StatusNullPointer)
		}()
	}
	for name, f := range map[string]func() error{
		"Session.Close": s.Close, "Config.Close": c.Close,
		"Classifier.Close": clf.Close, "Tensor.Close": x.Close,
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s on a nil receiver panicked: %v", name, r)
				}
			}()
			if err := f(); err != nil {
				t.Errorf("%s on a nil receiver: %v", name, err)
			}
		}()
	}
}
