package pki

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// Kubeconfig renders a kubeconfig reaching SERVER as the leaf's user, with the CA, certificate
// and key inline (one file a client can be given). YAML by hand: every value is a URL or
// base64, and the standard library has no YAML encoder.
func Kubeconfig(server string, caPEM []byte, user string, leaf Leaf) (string, error) {
	if strings.ContainsAny(server, "\n\"'") || strings.ContainsAny(user, "\n\"'") {
		return "", fmt.Errorf("kubeconfig: server %q or user %q holds a newline or a quote", server, user)
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster:
    server: "%s"
    certificate-authority-data: %s
users:
- name: "%s"
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: kiln
  context:
    cluster: kiln
    user: "%s"
current-context: kiln
`, server, b64(caPEM), user, b64(leaf.CertPEM), b64(leaf.KeyPEM), user), nil
}
