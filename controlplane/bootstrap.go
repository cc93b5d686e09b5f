package main

import (
	"fmt"
	"net"
	"os"

	"kiln.dev/controlplane/internal/pki"
)

// Client identities the control plane issues for itself on every start. The controller
// manager and the scheduler are bound by the API server's bootstrap RBAC policy to these user
// names; the administrator is in system:masters.
const (
	adminUser      = "kiln-admin"
	controllerUser = "system:kube-controller-manager"
	schedulerUser  = "system:kube-scheduler"
	kubeletClient  = "kube-apiserver-kubelet-client"
)

// bootstrap makes the data directory, keeps or makes the CA and the ServiceAccount key, and
// issues every leaf certificate and kubeconfig again. It returns the CA for later kubeconfigs.
func bootstrap(c *config) (*pki.CA, error) {
	for _, d := range []string{c.dataDir, c.pkiDir(), c.etcdDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		// A data directory made by someone else with a looser mode is tightened, not trusted.
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, err
		}
	}
	ca, err := pki.LoadOrCreateCA(c.pkiDir(), "kiln-control-plane-ca")
	if err != nil {
		return nil, err
	}
	if err := pki.LoadOrCreateSAKey(c.pkiDir()); err != nil {
		return nil, err
	}

	serving, err := ca.Serving(servingNames(c))
	if err != nil {
		return nil, err
	}
	if err := serving.Write(c.pki(pki.ServingCert), c.pki(pki.ServingKey)); err != nil {
		return nil, err
	}
	kubelet, err := ca.Client(kubeletClient, "system:masters")
	if err != nil {
		return nil, err
	}
	if err := kubelet.Write(c.pki(pki.KubeletClient), c.pki(pki.KubeletClientKy)); err != nil {
		return nil, err
	}

	for _, k := range []struct {
		file, user string
		groups     []string
	}{
		{"admin", adminUser, []string{"system:masters"}},
		{"controller-manager", controllerUser, nil},
		{"scheduler", schedulerUser, nil},
	} {
		if err := writeKubeconfig(ca, c.kubeconfig(k.file), c.loopbackURL(), k.user, k.groups...); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

// servingNames: loopback and every interface address (so the API is reachable as whatever
// address a client uses, a QEMU hostfwd on the host's 127.0.0.1 included), the advertised
// address, the first Service IP, the in-cluster names, the host name and --tls-san.
func servingNames(c *config) pki.Serving {
	s := pki.Serving{
		IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(c.advertiseAddress)},
		DNS: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	if ip := firstServiceIP(c.serviceCIDR); ip != nil {
		s.IPs = append(s.IPs, ip)
	}
	s.IPs = append(s.IPs, interfaceIPs()...)
	if h := hostname(); h != "" {
		s.DNS = append(s.DNS, h)
	}
	for _, san := range c.tlsSANs {
		if ip := net.ParseIP(san); ip != nil {
			s.IPs = append(s.IPs, ip)
		} else {
			s.DNS = append(s.DNS, san)
		}
	}
	s.IPs = uniqueIPs(s.IPs)
	return s
}

// firstServiceIP is the cluster IP of the `kubernetes` Service: the range's first address.
func firstServiceIP(cidr string) net.IP {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil
	}
	ip := make(net.IP, len(n.IP))
	copy(ip, n.IP)
	ip[len(ip)-1]++
	return ip
}

func uniqueIPs(ips []net.IP) []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	for _, ip := range ips {
		if ip == nil || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		out = append(out, ip)
	}
	return out
}

func writeKubeconfig(ca *pki.CA, path, server, user string, groups ...string) error {
	leaf, err := ca.Client(user, groups...)
	if err != nil {
		return err
	}
	body, err := pki.Kubeconfig(server, ca.CertPEM, user, leaf)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(path, []byte(body), 0o600); err != nil {
		return fmt.Errorf("kubeconfig for %s: %w", user, err)
	}
	return nil
}
