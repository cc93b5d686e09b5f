package main

import (
	"strings"
	"testing"
)

func TestRunFlagsAreCheckedByName(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--secure-port=0"}, "--secure-port 0"},
		{[]string{"--etcd-client-port=70000"}, "--etcd-client-port 70000"},
		{[]string{"--etcd-client-port=2400", "--etcd-peer-port=2400"}, "both 2400"},
		{[]string{"--bind-address=nowhere"}, "--bind-address \"nowhere\""},
		{[]string{"--advertise-address=10.0.2"}, "--advertise-address"},
		{[]string{"--service-cidr=10.96.0.0"}, "--service-cidr"},
		{[]string{"--tls-san=has space"}, "--tls-san \"has space\""},
		{[]string{"stray"}, "no arguments"},
	} {
		_, err := parseRunFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

func TestDefaultsAndDataDirIsAbsolute(t *testing.T) {
	c, err := parseRunFlags([]string{"--data-dir=rel", "--advertise-address=10.0.2.15"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.dataDir, "/") || !strings.HasSuffix(c.dataDir, "/rel") {
		t.Errorf("data dir %q", c.dataDir)
	}
	if c.securePort != 6443 || c.etcdURL() != "http://127.0.0.1:2379" || c.loopbackURL() != "https://127.0.0.1:6443" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestServingNamesCoverEveryWayIn(t *testing.T) {
	c, err := parseRunFlags([]string{"--advertise-address=10.0.2.15", "--tls-san=cp.example,192.0.2.7", "--service-cidr=10.100.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	s := servingNames(c)
	ips := map[string]bool{}
	for _, ip := range s.IPs {
		if ips[ip.String()] {
			t.Errorf("%s twice", ip)
		}
		ips[ip.String()] = true
	}
	for _, want := range []string{"127.0.0.1", "10.0.2.15", "10.100.0.1", "192.0.2.7"} {
		if !ips[want] {
			t.Errorf("no IP SAN %s in %v", want, s.IPs)
		}
	}
	dns := strings.Join(s.DNS, ",")
	for _, want := range []string{"localhost", "kubernetes.default.svc.cluster.local", "cp.example"} {
		if !strings.Contains(dns, want) {
			t.Errorf("no DNS SAN %s in %s", want, dns)
		}
	}
}

func TestALoopbackAdvertiseAddressKeepsNoEndpoint(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1": true, "10.0.2.15": false} {
		c, err := parseRunFlags([]string{"--advertise-address=" + addr})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(strings.Join(apiserverArgs(c), " "), "--endpoint-reconciler-type=none")
		if got != want {
			t.Errorf("advertise %s: endpoint reconciler off = %v", addr, got)
		}
	}
}

func TestAUserFlagReplacesKilnsWhole(t *testing.T) {
	got := strings.Join(withOverrides(
		[]string{"--etcd-servers=http://127.0.0.1:2379", "--secure-port=6443", "--profiling=false"},
		[]string{"--etcd-servers=http://127.0.0.1:9", "--profiling"},
	), " ")
	want := "--secure-port=6443 --etcd-servers=http://127.0.0.1:9 --profiling"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
