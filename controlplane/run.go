package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// How long the API server may take to answer /readyz after it starts (first start under TCG
// emulation, with every built-in object to create, is the slow case).
const apiReady = 10 * time.Minute

// How long the components get to stop after SIGTERM before etcd is closed under them.
const shutdownGrace = 30 * time.Second

// readyLine is printed on stderr once /readyz answers ok and the controllers and scheduler are
// started: what an image's readiness check or a human watching the log waits for.
const readyLine = "kiln-control-plane: ready"

// result is how a component's Run returned.
type result struct {
	name string
	err  error
}

func runCommand(args []string) (err error) {
	c, err := parseRunFlags(args)
	if err != nil {
		return err
	}
	// Every flag is checked before anything is written or started.
	k, err := parseComponents(c)
	if err != nil {
		return err
	}
	console := os.Stderr
	if c.logFile != "" {
		if console, err = redirectOutput(c.logFile); err != nil {
			return err
		}
		// A failure is logged to the file and told on the console too.
		defer func() {
			if err != nil {
				fmt.Fprintf(console, "kiln-control-plane: error: %v (log: %s)\n", err, c.logFile)
			}
		}()
	}
	if _, err := bootstrap(c); err != nil {
		return fmt.Errorf("certificates in %s: %w", c.pkiDir(), err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	etcd, err := startEtcd(ctx, c)
	if err != nil {
		return err
	}
	defer etcd.Close()

	// One context for the three components: cancelled by a signal or by any of them returning.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan result, 3)
	running := 0
	start := func(name string, run func(context.Context) error) {
		running++
		go func() { done <- result{name, run(cctx)} }()
	}

	k.addMetrics()
	start("kube-apiserver", k.runAPIServer)
	if err := waitReady(cctx, c, done); err != nil {
		cancel()
		drain(done, running)
		return err
	}
	start("kube-controller-manager", k.runControllerManager)
	start("kube-scheduler", k.runScheduler)
	fmt.Fprintln(console, readyLine)
	if console != os.Stderr {
		fmt.Fprintln(os.Stderr, readyLine)
	}

	var failure error
	select {
	case <-ctx.Done():
		klog.InfoS("kiln-control-plane: stopping")
	case r := <-done:
		running--
		failure = fmt.Errorf("%s stopped: %v", r.name, r.err)
	case err := <-etcd.Err():
		failure = fmt.Errorf("etcd stopped: %v", err)
	}
	cancel()
	drain(done, running)
	return failure
}

// waitReady polls /readyz as the administrator until it answers ok, the API server returns, or
// apiReady passes.
func waitReady(ctx context.Context, c *config, done <-chan result) error {
	deadline := time.Now().Add(apiReady)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := probeReady(pctx, c.kubeconfig("admin"))
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready after %s: %v", apiReady, err)
		}
		select {
		case r := <-done:
			return fmt.Errorf("%s stopped before it was ready: %v", r.name, r.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// drain waits up to shutdownGrace for the running components to return.
func drain[T any](done <-chan T, running int) {
	timeout := time.After(shutdownGrace)
	for ; running > 0; running-- {
		select {
		case <-done:
		case <-timeout:
			klog.ErrorS(errors.New("timeout"), "kiln-control-plane: components still running after the grace period", "running", running, "grace", shutdownGrace)
			return
		}
	}
}
