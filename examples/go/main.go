// Command harden runs a complete moth hardening run from Go: it measures
// class distances, hardens a TorchScript classifier while training it on
// every stamped batch with moth's own optimiser, checkpoints the session and
// the trainer halfway, and measures the distances again. It then resumes
// from the checkpoint in a fresh classifier and checks that the resumed run
// ends with exactly the model of the uninterrupted one.
//
// It reads Fashion-MNIST images itself (gzip IDX files): a quarter is held
// out for accuracy reports and distances.
//
// Build and run from this folder (see bindings/go/README.md):
//
//	(cd $MOTH && scripts/gen-pc.sh) && export PKG_CONFIG_PATH=$MOTH/target/release
//	go run . -model model.pt [-data DIR] [-images N] [-batch B] [-steps S]
package main

import (
	"compress/gzip"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"moth"
)

const (
	side    = 28
	pixels  = side * side
	classes = 10
)

// readIDX returns the first n images (floats in [0, 1]) and labels of the
// training split in dir.
func readIDX(dir string, n int) ([]float32, []int64, error) {
	open := func(name string, magic uint32) (io.Reader, func(), error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		z, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		var head [2]uint32
		if err := binary.Read(z, binary.BigEndian, &head); err != nil || head[0] != magic || int(head[1]) < n {
			f.Close()
			return nil, nil, fmt.Errorf("%s: not an IDX file with %d entries", name, n)
		}
		return z, func() { f.Close() }, nil
	}
	z, done, err := open("train-images-idx3-ubyte.gz", 2051)
	if err != nil {
		return nil, nil, err
	}
	var dims [2]uint32
	raw := make([]byte, n*pixels)
	if err := binary.Read(z, binary.BigEndian, &dims); err != nil || dims != [2]uint32{side, side} {
		done()
		return nil, nil, fmt.Errorf("images are not %dx%d", side, side)
	}
	_, err = io.ReadFull(z, raw)
	done()
	if err != nil {
		return nil, nil, fmt.Errorf("images: %w", err)
	}
	images := make([]float32, len(raw))
	for i, b := range raw {
		images[i] = float32(b) / 255
	}
	z, done, err = open("train-labels-idx1-ubyte.gz", 2049)
	if err != nil {
		return nil, nil, err
	}
	_, err = io.ReadFull(z, raw[:n])
	done()
	if err != nil {
		return nil, nil, fmt.Errorf("labels: %w", err)
	}
	labels := make([]int64, n)
	for i := range labels {
		labels[i] = int64(raw[i])
	}
	return images, labels, nil
}

// accuracy is the share of images the classifier labels correctly.
func accuracy(clf *moth.Classifier, images []float32, labels []int64) (float64, error) {
	logits, k, err := clf.Forward(images, [4]int64{int64(len(labels)), 1, side, side})
	if err != nil {
		return 0, err
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
	return float64(right) / float64(len(labels)), nil
}

// run is one hardening run: the session, the classifier it hardens and
// the trainer that trains it.
type run struct {
	s   *moth.Session
	clf *moth.Classifier
	tr  *moth.Trainer
}

// harden drives the run until the session has taken stopAt steps (or is
// done, with stopAt < 0): a step hardens the batch the step number picks
// and trains on the stamped pixels with the true labels. Batches depend on
// the step only, so a resumed run sees what the uninterrupted one saw.
func (r run) harden(images []float32, labels []int64, nTrain, heldOut, batch, stopAt int, verbose bool) error {
	for {
		step, err := r.s.Step()
		if err != nil {
			return err
		}
		if stopAt >= 0 && int(step) >= stopAt {
			return nil
		}
		offset := int(step) * batch % (nTrain - batch + 1)
		x := images[offset*pixels : (offset+batch)*pixels]
		y := labels[offset : offset+batch]
		shape := [4]int64{int64(batch), 1, side, side}
		stamped, rep, err := r.s.HardenBatch(r.clf, x, shape, y)
		switch {
		case errors.Is(err, moth.StatusAccuracyWanted):
			acc, err := accuracy(r.clf, images[nTrain*pixels:], labels[nTrain:])
			if err != nil {
				return err
			}
			v, drop, err := r.s.ReportAccuracy(acc)
			if err != nil {
				return err
			}
			if verbose {
				fmt.Printf("accuracy %.4f: %v (drop %.4f)\n", acc, v, drop)
			}
			continue // the same batch again
		case errors.Is(err, moth.StatusDone):
			return nil
		case err != nil:
			return err
		}
		loss, err := r.tr.Step(stamped, shape, y)
		if err != nil {
			return err
		}
		if !verbose {
			continue
		}
		fmt.Printf("step %d %v", rep.Step, rep.Phase.Kind)
		if rep.Phase.Kind == moth.PhaseOrthogonalize {
			fmt.Printf(" pair %d<->%d", rep.Phase.Source, rep.Phase.Target)
		} else {
			fmt.Printf(" target %d", rep.Phase.Target)
		}
		for _, d := range rep.Directions {
			state := "failed"
			if d.Reached {
				state = "reached"
			}
			fmt.Printf(" | %d->%d size %.2f %s stamped %d", d.Victim, d.Target, d.Size, state, d.Stamped)
		}
		fmt.Printf(" | %d inv steps %.3fs | loss %.4f\n", rep.InversionSteps, rep.Seconds, loss)
	}
}

// distances measures the class distances of clf on the held-out images.
func distances(clf *moth.Classifier, images []float32, labels []int64) (*moth.Distances, error) {
	cfg, err := moth.NewDistanceConfig("quick")
	if err != nil {
		return nil, err
	}
	defer cfg.Close()
	if err := cfg.SetSamples(8); err != nil {
		return nil, err
	}
	if err := cfg.SetSteps(100); err != nil {
		return nil, err
	}
	progress := 0
	d, err := moth.MeasureDistances(clf, cfg, images, [4]int64{int64(len(labels)), 1, side, side}, labels,
		classes, nil, func(done, total int) bool { progress = done; return true })
	if err != nil {
		return nil, err
	}
	if progress != classes*(classes-1) {
		return nil, fmt.Errorf("progress reported %d pairs", progress)
	}
	return d, nil
}

// mean is the mean of the measured (positive) off-diagonal distances.
func mean(d *moth.Distances) (float64, int) {
	sum, n := 0.0, 0
	for _, v := range d.Values {
		if v > 0 {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0, 0
	}
	return sum / float64(n), n
}

func main() {
	modelPath := flag.String("model", "", "TorchScript classifier: [n,1,28,28] pixels in [0,1] -> [n,10] logits")
	dataDir := flag.String("data", "/usr/share/datasets/fashion-mnist", "folder of the Fashion-MNIST .gz files")
	nImages := flag.Int("images", 400, "images to read (a quarter is held out for accuracy and distances)")
	batchSize := flag.Int("batch", 64, "batch size")
	steps := flag.Int("steps", 14, "hardening steps (max_steps)")
	flag.Parse()
	if *modelPath == "" || *batchSize <= 0 || *nImages < 2**batchSize {
		log.Fatal("need -model and -images >= 2 * -batch")
	}

	fmt.Printf("moth %s (ABI %d)\n", moth.Version(), moth.ABIVersion())
	if err := moth.CheckABI(); err != nil {
		log.Fatal(err)
	}
	images, labels, err := readIDX(*dataDir, *nImages)
	if err != nil {
		log.Fatal(err)
	}
	heldOut := *nImages / 4
	nTrain := *nImages - heldOut
	fmt.Printf("loaded %d Fashion-MNIST images (%d for hardening, %d held out)\n", *nImages, nTrain, heldOut)
	testX, testY := images[nTrain*pixels:], labels[nTrain:]

	// Small inversion budgets, so that a CPU run takes seconds.
	cfg, err := moth.NewConfig()
	if err != nil {
		log.Fatal(err)
	}
	defer cfg.Close()
	// The cap is the whole image: with so short inversions the triggers
	// are large, and a smaller cap would stamp nothing.
	if err := cfg.SetJSON(`{"seed": 1, "accuracy_every": 5, "period": 2, "portion": 0.5,
		"warmup": {"budget": {"steps": 30}, "pool_per_class": 4},
		"first": {"steps": 30}, "later": {"steps": 15}, "max_accuracy_drop": 0.5,
		"bounds": {"cap_fraction": 1.0}}`); err != nil {
		log.Fatal(err)
	}
	if err := cfg.SetInt("max_steps", int64(*steps)); err != nil {
		log.Fatal(err)
	}
	if err := cfg.SetString("method", "moth"); err != nil {
		log.Fatal(err)
	}

	clf, err := moth.LoadTorchScript(*modelPath, 1, side, side, moth.CPU)
	if err != nil {
		log.Fatal(err)
	}
	defer clf.Close()
	before, err := distances(clf, testX, testY)
	if err != nil {
		log.Fatal(err)
	}
	m0, n0 := mean(before)
	fmt.Printf("distances before: mean %.2f over %d directions\n", m0, n0)

	spec := moth.Spec{NumClasses: classes, C: 1, H: side, W: side}
	s, err := moth.NewSession(cfg, spec)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { s.Close() }()
	// SGD with Nesterov momentum, at a larger rate than the "hardening"
	// preset's 1e-4 so that a short run visibly moves the model.
	tr, err := moth.NewTrainer(clf, `{"kind": {"Sgd": {"momentum": 0.9, "nesterov": true}}, "lr": 0.003, "weight_decay": 0}`)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	r := run{s, clf, tr}

	// First half, then a checkpoint of the session and the trainer (the
	// model and optimiser) at the same step.
	half := *steps / 2
	if err := r.harden(images, labels, nTrain, heldOut, *batchSize, half, true); err != nil {
		log.Fatal(err)
	}
	sessionBytes, err := s.ToBytes()
	if err != nil {
		log.Fatal(err)
	}
	trainerBytes, err := tr.ToBytes()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("checkpoint at step %d: session %d bytes, trainer %d bytes\n", half, len(sessionBytes), len(trainerBytes))
	if err := r.harden(images, labels, nTrain, heldOut, *batchSize, -1, true); err != nil {
		log.Fatal(err)
	}
	p, _ := s.Phase()
	n, _ := s.Step()
	trained, _ := tr.Steps()
	fmt.Printf("session done after %d steps (%v), %d training steps\n", n, p.DoneReason, trained)

	after, err := distances(clf, testX, testY)
	if err != nil {
		log.Fatal(err)
	}
	m1, n1 := mean(after)
	fmt.Printf("distances after: mean %.2f over %d directions (%+.1f%%)\n", m1, n1, 100*(m1-m0)/m0)

	// Resume from the checkpoint in a fresh classifier: the resumed run
	// must end with the uninterrupted run's model, bit for bit.
	clf2, err := moth.LoadTorchScript(*modelPath, 1, side, side, moth.CPU)
	if err != nil {
		log.Fatal(err)
	}
	defer clf2.Close()
	tr2, err := moth.TrainerFromBytes(clf2, trainerBytes)
	if err != nil {
		log.Fatal(err)
	}
	defer tr2.Close()
	s2, err := moth.SessionFromBytes(sessionBytes, spec)
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Close()
	k, _ := s2.Step()
	fmt.Printf("resumed at step %d\n", k)
	if err := (run{s2, clf2, tr2}).harden(images, labels, nTrain, heldOut, *batchSize, -1, false); err != nil {
		log.Fatal(err)
	}
	a, _, err := clf.Forward(testX, [4]int64{int64(heldOut), 1, side, side})
	if err != nil {
		log.Fatal(err)
	}
	b, _, err := clf2.Forward(testX, [4]int64{int64(heldOut), 1, side, side})
	if err != nil {
		log.Fatal(err)
	}
	for i := range a {
		if a[i] != b[i] {
			log.Fatalf("the resumed run's logit %d is %v, the uninterrupted run's %v", i, b[i], a[i])
		}
	}
	sa, _ := s.Matrix(moth.MatrixSize)
	sb, _ := s2.Matrix(moth.MatrixSize)
	for i := range sa {
		if sa[i] != sb[i] {
			log.Fatalf("the resumed session's size matrix differs at %d", i)
		}
	}
	fmt.Println("resumed run equals the uninterrupted run (model logits and session, bit for bit)")

	counts, err := s.Matrix(moth.MatrixCount)
	if err != nil {
		log.Fatal(err)
	}
	chosen := 0.0
	for _, c := range counts {
		chosen += c
	}
	fmt.Printf("pairs chosen (counted both ways): %.0f\nok\n", chosen)
}
