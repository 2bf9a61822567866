// Command harden drives a moth hardening session from Go.
//
// It reads Fashion-MNIST images itself (gzip IDX files), loads a
// TorchScript classifier, and runs hardening steps: HardenBatch with its
// step report, clean-accuracy reports when the session asks, a checkpoint
// to memory and a resume from it halfway, and the scheduler matrices at the
// end. It does no training (a Go trainer would train on each stamped batch);
// examples/cpp/trainer.cpp shows the full loop.
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

func main() {
	modelPath := flag.String("model", "", "TorchScript classifier: [n,1,28,28] pixels in [0,1] -> [n,10] logits")
	dataDir := flag.String("data", "/usr/share/datasets/fashion-mnist", "folder of the Fashion-MNIST .gz files")
	nImages := flag.Int("images", 400, "images to read (a quarter is held out for accuracy)")
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

	// Small inversion budgets, so that a CPU run takes seconds.
	cfg, err := moth.NewConfig()
	if err != nil {
		log.Fatal(err)
	}
	defer cfg.Close()
	if err := cfg.SetJSON(`{"seed": 1, "accuracy_every": 5, "period": 2, "portion": 0.5,
		"warmup": {"budget": {"steps": 4}, "pool_per_class": 4},
		"first": {"steps": 4}, "later": {"steps": 2}, "max_accuracy_drop": 0.5}`); err != nil {
		log.Fatal(err)
	}
	if err := cfg.SetInt("max_steps", int64(*steps)); err != nil {
		log.Fatal(err)
	}

	clf, err := moth.LoadTorchScript(*modelPath, 1, side, side, moth.CPU)
	if err != nil {
		log.Fatal(err)
	}
	defer clf.Close()
	spec := moth.Spec{NumClasses: classes, C: 1, H: side, W: side}
	s, err := moth.NewSession(cfg, spec)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { s.Close() }()

	offset := 0
hardening:
	for {
		if offset+*batchSize > nTrain {
			offset = 0
		}
		x := images[offset*pixels : (offset+*batchSize)*pixels]
		y := labels[offset : offset+*batchSize]
		stamped, r, err := s.HardenBatch(clf, x, [4]int64{int64(*batchSize), 1, side, side}, y)
		switch {
		case errors.Is(err, moth.StatusAccuracyWanted):
			acc, err := accuracy(clf, images[nTrain*pixels:], labels[nTrain:])
			if err != nil {
				log.Fatal(err)
			}
			v, drop, err := s.ReportAccuracy(acc)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("accuracy %.4f: %v (drop %.4f)\n", acc, v, drop)
			continue // the same batch again
		case errors.Is(err, moth.StatusDone):
			p, _ := s.Phase()
			n, _ := s.Step()
			fmt.Printf("session done after %d steps (%v)\n", n, p.DoneReason)
			break hardening
		case err != nil:
			log.Fatal(err)
		}
		offset += *batchSize
		// A trainer would train on stamped, with the labels y, here.
		_ = stamped

		fmt.Printf("step %d %v", r.Step, r.Phase.Kind)
		if r.Phase.Kind == moth.PhaseOrthogonalize {
			fmt.Printf(" pair %d<->%d", r.Phase.Source, r.Phase.Target)
		} else {
			fmt.Printf(" target %d", r.Phase.Target)
		}
		for _, d := range r.Directions {
			state := "failed"
			if d.Reached {
				state = "reached"
			}
			fmt.Printf(" | %d->%d size %.2f %s stamped %d", d.Victim, d.Target, d.Size, state, d.Stamped)
		}
		fmt.Printf(" | %d inv steps %.3fs\n", r.InversionSteps, r.Seconds)

		// Halfway: checkpoint to memory, drop the session, resume.
		if int(r.Step)+1 == *steps/2 {
			data, err := s.ToBytes()
			if err != nil {
				log.Fatal(err)
			}
			s.Close()
			if s, err = moth.SessionFromBytes(data, spec); err != nil {
				log.Fatal(err)
			}
			n, _ := s.Step()
			fmt.Printf("checkpoint: %d bytes, resumed at step %d\n", len(data), n)
		}
	}

	counts, err := s.Matrix(moth.MatrixCount)
	if err != nil {
		log.Fatal(err)
	}
	sizes, err := s.Matrix(moth.MatrixSize)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("trigger sizes (row: victim, column: target):")
	for i := 0; i < classes; i++ {
		for j := 0; j < classes; j++ {
			fmt.Printf(" %6.1f", sizes[i*classes+j])
		}
		fmt.Println()
	}
	chosen := 0.0
	for _, c := range counts {
		chosen += c
	}
	fmt.Printf("pairs chosen (counted both ways): %.0f\nok\n", chosen)
}
