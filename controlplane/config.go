package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// config is what the run command was asked for.
type config struct {
	dataDir          string
	securePort       int
	bindAddress      string
	advertiseAddress string
	tlsSANs          []string
	etcdClientPort   int
	etcdPeerPort     int
	serviceCIDR      string
	unsafeNoFsync    bool
	logFile          string
	apiserverArgs    []string
	controllerArgs   []string
	schedulerArgs    []string
}

const defaultDataDir = "/var/lib/kiln-control-plane"

func parseRunFlags(args []string) (*config, error) {
	c := &config{}
	fs := pflag.NewFlagSet("kiln-control-plane run", pflag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data-dir", defaultDataDir, "where the CA, the ServiceAccount key, etcd's data and the kubeconfigs are kept")
	fs.IntVar(&c.securePort, "secure-port", 6443, "the API server's HTTPS port")
	fs.StringVar(&c.bindAddress, "bind-address", "0.0.0.0", "the address the API server listens on")
	fs.StringVar(&c.advertiseAddress, "advertise-address", "", "the address the API server advertises to the cluster (default: the first non-loopback IPv4 address, else 127.0.0.1)")
	fs.StringSliceVar(&c.tlsSANs, "tls-san", nil, "extra names or addresses for the serving certificate")
	fs.IntVar(&c.etcdClientPort, "etcd-client-port", 2379, "etcd's client port on 127.0.0.1")
	fs.IntVar(&c.etcdPeerPort, "etcd-peer-port", 2380, "etcd's peer port on 127.0.0.1")
	fs.StringVar(&c.serviceCIDR, "service-cidr", "10.96.0.0/16", "the Service cluster IP range")
	fs.BoolVar(&c.unsafeNoFsync, "unsafe-no-fsync", false, "etcd skips fsync (tests only: a power cut can lose data)")
	fs.StringVar(&c.logFile, "log-file", "", "append the components' logs to this file instead of stderr (the ready line still goes to stderr)")
	fs.StringArrayVar(&c.apiserverArgs, "apiserver-arg", nil, "a kube-apiserver flag as --NAME=VALUE, e.g. --apiserver-arg=--v=2 (repeatable; replaces Kiln's value of that flag)")
	fs.StringArrayVar(&c.controllerArgs, "controller-manager-arg", nil, "an extra kube-controller-manager flag (repeatable)")
	fs.StringArrayVar(&c.schedulerArgs, "scheduler-arg", nil, "an extra kube-scheduler flag (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("run takes no arguments, got %q", fs.Args())
	}
	for name, p := range map[string]int{"--secure-port": c.securePort, "--etcd-client-port": c.etcdClientPort, "--etcd-peer-port": c.etcdPeerPort} {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("%s %d: not a TCP port", name, p)
		}
	}
	if c.etcdClientPort == c.etcdPeerPort {
		return nil, fmt.Errorf("--etcd-client-port and --etcd-peer-port are both %d", c.etcdClientPort)
	}
	if net.ParseIP(c.bindAddress) == nil {
		return nil, fmt.Errorf("--bind-address %q: not an IP address", c.bindAddress)
	}
	if c.advertiseAddress == "" {
		c.advertiseAddress = firstNonLoopback()
	} else if net.ParseIP(c.advertiseAddress) == nil {
		return nil, fmt.Errorf("--advertise-address %q: not an IP address", c.advertiseAddress)
	}
	if _, _, err := net.ParseCIDR(c.serviceCIDR); err != nil {
		return nil, fmt.Errorf("--service-cidr %q: %v", c.serviceCIDR, err)
	}
	for _, s := range c.tlsSANs {
		if s == "" || strings.ContainsAny(s, " \n\t,") {
			return nil, fmt.Errorf("--tls-san %q: not a host name or address", s)
		}
	}
	abs, err := filepath.Abs(c.dataDir)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %q: %v", c.dataDir, err)
	}
	c.dataDir = abs
	return c, nil
}

// Paths under the data directory.
func (c *config) pkiDir() string             { return filepath.Join(c.dataDir, "pki") }
func (c *config) pki(name string) string     { return filepath.Join(c.dataDir, "pki", name) }
func (c *config) etcdDir() string            { return filepath.Join(c.dataDir, "etcd") }
func (c *config) kubeconfig(n string) string { return filepath.Join(c.dataDir, n+".kubeconfig") }
func (c *config) loopbackURL() string        { return fmt.Sprintf("https://127.0.0.1:%d", c.securePort) }
func (c *config) etcdURL() string            { return fmt.Sprintf("http://127.0.0.1:%d", c.etcdClientPort) }

// firstNonLoopback is the first up, non-loopback IPv4 address (10.0.2.15 in a QEMU guest with
// user-mode networking), or 127.0.0.1 on a machine without one.
func firstNonLoopback() string {
	for _, ip := range interfaceIPs() {
		if ip.To4() != nil {
			return ip.String()
		}
	}
	return "127.0.0.1"
}

// interfaceIPs lists the addresses of the interfaces that are up, loopback excluded.
func interfaceIPs() []net.IP {
	var out []net.IP
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	for _, i := range ifaces {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				out = append(out, n.IP)
			}
		}
	}
	return out
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
