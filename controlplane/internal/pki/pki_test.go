package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

func TestCAIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "kiln-test")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "kiln-test" {
		t.Fatalf("not the CA asked for: %+v", ca.Cert.Subject)
	}
	for name, want := range map[string]os.FileMode{CACert: 0o644, CAKey: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", name, st.Mode().Perm(), want)
		}
	}
	again, err := LoadOrCreateCA(dir, "kiln-test")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.CertPEM, ca.CertPEM) {
		t.Fatal("a second start made a new CA")
	}
	// A leaf issued after the restart chains to the CA of the first start.
	leaf, err := again.Client("someone")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, ca, leaf, x509.ExtKeyUsageClientAuth)
}

func TestHalfACAIsRefusedByName(t *testing.T) {
	for _, missing := range []string{CACert, CAKey} {
		dir := t.TempDir()
		if _, err := LoadOrCreateCA(dir, "kiln-test"); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, missing)); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreateCA(dir, "kiln-test")
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, missing)+" is missing") {
			t.Fatalf("without %s: %v", missing, err)
		}
		if _, err := os.Stat(filepath.Join(dir, missing)); err == nil {
			t.Fatalf("%s was made again", missing)
		}
	}
}

func TestAKeyThatIsNotTheCAsIsRefused(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := LoadOrCreateCA(d, "kiln-test"); err != nil {
			t.Fatal(err)
		}
	}
	other, _ := os.ReadFile(filepath.Join(b, CAKey))
	if err := os.WriteFile(filepath.Join(a, CAKey), other, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateCA(a, "kiln-test")
	if err == nil || !strings.Contains(err.Error(), "does not hold the key of") {
		t.Fatalf("a foreign key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(a, CACert), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreateCA(a, "kiln-test")
	if err == nil || !strings.Contains(err.Error(), filepath.Join(a, CACert)) {
		t.Fatalf("a garbage certificate: %v", err)
	}
}

func TestServingCertificateNamesAndUsage(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "kiln-test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Serving(Serving{
		IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.2.15")},
		DNS: []string{"localhost", "kubernetes.default.svc"},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := verify(t, ca, leaf, x509.ExtKeyUsageServerAuth)
	for _, host := range []string{"127.0.0.1", "10.0.2.15", "localhost", "kubernetes.default.svc"} {
		if err := c.VerifyHostname(host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if err := c.VerifyHostname("10.0.2.16"); err == nil {
		t.Error("valid for an address it was not issued for")
	}
	if c.IsCA {
		t.Error("a leaf is a CA")
	}
}

func TestClientCertificateCarriesUserAndGroups(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "kiln-test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Client("system:node:w1", "system:nodes", "kiln:agents")
	if err != nil {
		t.Fatal(err)
	}
	c := verify(t, ca, leaf, x509.ExtKeyUsageClientAuth)
	// The groups are one multi-valued RDN, which DER sorts: compare them as a set.
	groups := append([]string(nil), c.Subject.Organization...)
	sort.Strings(groups)
	if c.Subject.CommonName != "system:node:w1" || strings.Join(groups, ",") != "kiln:agents,system:nodes" {
		t.Fatalf("subject %+v", c.Subject)
	}
	// Not usable to serve.
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("a client certificate verifies for server auth")
	}
}

func TestServiceAccountKeyIsKept(t *testing.T) {
	dir := t.TempDir()
	if err := LoadOrCreateSAKey(dir); err != nil {
		t.Fatal(err)
	}
	key1, _ := os.ReadFile(filepath.Join(dir, SAKey))
	pub1, _ := os.ReadFile(filepath.Join(dir, SAPub))
	if err := LoadOrCreateSAKey(dir); err != nil {
		t.Fatal(err)
	}
	key2, _ := os.ReadFile(filepath.Join(dir, SAKey))
	pub2, _ := os.ReadFile(filepath.Join(dir, SAPub))
	if !bytes.Equal(key1, key2) || !bytes.Equal(pub1, pub2) || len(pub1) == 0 {
		t.Fatal("the ServiceAccount key changed across starts")
	}
	if st, _ := os.Stat(filepath.Join(dir, SAKey)); st.Mode().Perm() != 0o600 {
		t.Fatalf("sa.key mode %o", st.Mode().Perm())
	}
}

func TestWriteFileLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("content %q", b)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "missing", "f")) {
		t.Fatalf("into a missing directory: %v", err)
	}
}

func TestKubeconfigEmbedsTheCredentials(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "kiln-test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Client("kiln-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := Kubeconfig("https://127.0.0.1:6443", ca.CertPEM, "kiln-admin", leaf)
	if err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string][]byte{
		"certificate-authority-data": ca.CertPEM,
		"client-certificate-data":    leaf.CertPEM,
		"client-key-data":            leaf.KeyPEM,
	} {
		m := regexp.MustCompile(field + `: (\S+)`).FindStringSubmatch(kc)
		if m == nil {
			t.Fatalf("no %s in\n%s", field, kc)
		}
		got, err := base64.StdEncoding.DecodeString(m[1])
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s does not decode to what was issued", field)
		}
	}
	if !strings.Contains(kc, `server: "https://127.0.0.1:6443"`) {
		t.Fatalf("server missing:\n%s", kc)
	}
	if _, err := Kubeconfig("https://x\nusers: []", ca.CertPEM, "u", leaf); err == nil {
		t.Fatal("a server with a newline was accepted")
	}
}

func pool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func verify(t *testing.T, ca *CA, leaf Leaf, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	c, err := parseCert(leaf.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Fatalf("does not chain to the CA: %v", err)
	}
	k, err := parseKey(leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(c.PublicKey, k.Public()) {
		t.Fatal("the key is not the certificate's")
	}
	return c
}
