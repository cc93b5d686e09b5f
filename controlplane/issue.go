package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
	"kiln.dev/controlplane/internal/pki"
)

// kubeconfigCommand issues a client kubeconfig from the cluster's CA: how a worker's kiln-agent
// or a person gets credentials (`kubeadm kubeconfig user`). Written with mode 0600 to --out, or
// to stdout.
func kubeconfigCommand(args []string) error {
	fs := pflag.NewFlagSet("kiln-control-plane kubeconfig", pflag.ContinueOnError)
	dataDir := fs.String("data-dir", defaultDataDir, "the control plane's data directory (its CA signs)")
	user := fs.String("user", "", "the user name (the certificate's CN)")
	groups := fs.StringSlice("group", nil, "a group (the certificate's O; repeatable)")
	server := fs.String("server", "", "the API server's URL as the client reaches it, e.g. https://10.0.2.2:6443")
	out := fs.String("out", "", "write here (mode 0600) instead of stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *user == "" {
		return fmt.Errorf("--user is required")
	}
	u, err := url.Parse(*server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("--server %q: not an https:// URL", *server)
	}
	dir := filepath.Join(*dataDir, "pki")
	for _, f := range []string{pki.CACert, pki.CAKey} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("no CA in %s (has the control plane started once?): %w", dir, err)
		}
	}
	ca, err := pki.LoadOrCreateCA(dir, "")
	if err != nil {
		return err
	}
	leaf, err := ca.Client(*user, *groups...)
	if err != nil {
		return err
	}
	body, err := pki.Kubeconfig(*server, ca.CertPEM, *user, leaf)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.WriteString(body)
		return err
	}
	return pki.WriteFile(*out, []byte(body), 0o600)
}
