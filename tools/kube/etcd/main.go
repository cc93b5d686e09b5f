// Command etcd is upstream etcd's server entry point, built from the pinned module so the
// Kubernetes test harness needs nothing beyond the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
