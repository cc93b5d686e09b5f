// Package pki makes and keeps the control plane's certificates: a CA and a ServiceAccount
// signing key made once and kept (they are what every client and token trusts), and the leaf
// certificates (the API server's serving certificate, the components' and the administrator's
// client certificates) issued again on every start from them, so a changed address or an
// expiring leaf never needs a manual step. Only the standard library: ECDSA P-256, as the test
// harness's CA (testutil/src/kube.rs).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Lifetimes: the CA outlives any node; a leaf lives a year and is re-issued on every start.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 365 * 24 * time.Hour
	// Clock skew a client may have against the node that issued a certificate.
	backdate = time.Hour
)

// Files under the PKI directory.
const (
	CACert          = "ca.crt"
	CAKey           = "ca.key"
	SAKey           = "sa.key"
	SAPub           = "sa.pub"
	ServingCert     = "apiserver.crt"
	ServingKey      = "apiserver.key"
	KubeletClient   = "apiserver-kubelet-client.crt"
	KubeletClientKy = "apiserver-kubelet-client.key"
)

// CA is a certificate authority held in memory.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
}

// Leaf is a certificate and its private key, both PEM.
type Leaf struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Serving describes the API server's serving certificate.
type Serving struct {
	IPs []net.IP
	DNS []string
}

// LoadOrCreateCA reads DIR/ca.crt and DIR/ca.key, or makes them when neither exists. One
// without the other is an error naming the missing file: making a new CA then would silently
// orphan every credential issued by the old one.
func LoadOrCreateCA(dir, name string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return parseCA(certPath, certPEM, keyPath, keyPEM)
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
	case certErr != nil && !errors.Is(certErr, os.ErrNotExist):
		return nil, fmt.Errorf("reading %s: %w", certPath, certErr)
	case keyErr != nil && !errors.Is(keyErr, os.ErrNotExist):
		return nil, fmt.Errorf("reading %s: %w", keyPath, keyErr)
	case certErr != nil:
		return nil, fmt.Errorf("%s is missing but %s exists: restore it, or remove both to make a new CA (every issued credential then stops working)", certPath, keyPath)
	default:
		return nil, fmt.Errorf("%s is missing but %s exists: restore it, or remove both to make a new CA (every issued credential then stops working)", keyPath, certPath)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	// The key first: a crash between the two leaves a key without a certificate, which the
	// next start refuses by name rather than replacing.
	if err := WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := WriteFile(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return parseCA(certPath, certPEM, keyPath, keyPEM)
}

func parseCA(certPath string, certPEM []byte, keyPath string, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s does not hold the key of %s", keyPath, certPath)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
}

// Client issues a client certificate: user CN, groups as organizations (how the API server
// reads them).
func (ca *CA) Client(cn string, groups ...string) (Leaf, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: groups},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// Serving issues the API server's serving certificate.
func (ca *CA) Serving(s Serving) (Leaf, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: s.IPs,
		DNSNames:    s.DNS,
	})
}

func (ca *CA) issue(tmpl *x509.Certificate) (Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Leaf{}, err
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(leafLifetime)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return Leaf{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return Leaf{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Leaf{}, err
	}
	return Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Write puts the leaf at CERT and KEY (the key readable by its owner only).
func (l Leaf) Write(certPath, keyPath string) error {
	if err := WriteFile(keyPath, l.KeyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(certPath, l.CertPEM, 0o644)
}

// LoadOrCreateSAKey reads or makes the key pair that signs ServiceAccount tokens: DIR/sa.key
// (PKCS#8) and DIR/sa.pub. Kept, so tokens issued before a restart stay valid.
func LoadOrCreateSAKey(dir string) error {
	keyPath, pubPath := filepath.Join(dir, SAKey), filepath.Join(dir, SAPub)
	keyPEM, err := os.ReadFile(keyPath)
	var key crypto.Signer
	switch {
	case err == nil:
		if key, err = parseKey(keyPEM); err != nil {
			return fmt.Errorf("%s: %w", keyPath, err)
		}
	case errors.Is(err, os.ErrNotExist):
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		if err := WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
		key = k
	default:
		return fmt.Errorf("reading %s: %w", keyPath, err)
	}
	// The public half is derived each time: it can never disagree with the key.
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	return WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// WriteFile writes through a temporary file in the same directory, fsyncs it and renames it
// over PATH, then fsyncs the directory: a crash leaves the old file or the new one, never a
// torn one.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

func parseCert(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(b.Bytes)
}

func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY (PKCS#8) block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("the key cannot sign")
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
