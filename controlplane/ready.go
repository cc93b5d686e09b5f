package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// readyCommand exits 0 when the API server at the kubeconfig's address answers /readyz with ok:
// an image's health check (`[update] health_checks`), so kiln-ready and mark-good both wait
// for a serving API.
func readyCommand(args []string) error {
	fs := pflag.NewFlagSet("kiln-control-plane ready", pflag.ContinueOnError)
	dataDir := fs.String("data-dir", defaultDataDir, "the control plane's data directory")
	kubeconfig := fs.String("kubeconfig", "", "the kubeconfig to ask with (default: DATA-DIR/admin.kubeconfig)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ready takes no arguments, got %q", fs.Args())
	}
	path := *kubeconfig
	if path == "" {
		path = filepath.Join(*dataDir, "admin.kubeconfig")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return probeReady(ctx, path)
}

// probeReady asks GET /readyz with the credentials of the kubeconfig at PATH.
func probeReady(ctx context.Context, path string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%s/readyz: %w", cfg.Host, err)
	}
	if strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("%s/readyz answered %q", cfg.Host, body)
	}
	return nil
}
