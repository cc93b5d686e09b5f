// Command kiln-control-plane runs a single-node Kubernetes control plane in one process: an
// embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler, each the upstream
// code at the release pinned in go.mod. On first start it makes a CA and a ServiceAccount key
// under --data-dir (kept, with etcd's data, across restarts and A/B updates when the data
// directory is on persist); every start issues the serving and client certificates again and
// writes an administrator's kubeconfig.
//
//	kiln-control-plane [run] [flags]   run the control plane until SIGTERM
//	kiln-control-plane ready           exit 0 if and only if the API server answers /readyz
//	kiln-control-plane kubeconfig      issue a client kubeconfig signed by the cluster's CA
package main

import (
	"fmt"
	"os"
)

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCommand(args)
	case "ready":
		err = readyCommand(args)
	case "kubeconfig":
		err = kubeconfigCommand(args)
	default:
		err = fmt.Errorf("unknown command %q: run, ready or kubeconfig", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kiln-control-plane: error: %v\n", err)
		os.Exit(1)
	}
}
