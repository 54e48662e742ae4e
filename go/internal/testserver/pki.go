// Certificates made at test time for the TLS tests: no key or certificate is committed.

package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a CA, a server certificate it signed for 127.0.0.1 and localhost, a client certificate it signed, and
// a client certificate of another CA ("stranger"), as PEM files in the test's temporary directory.
type PKI struct {
	CA                        string
	ServerCert, ServerKey     string
	ClientCert, ClientKey     string
	StrangerCert, StrangerKey string
	dir                       string
	ca                        issuer // for IssueClient
}

// ServerArgs are the `streamer serve` flags for TLS with this PKI's server certificate, and with mTLS
// (clients must present a certificate of the CA) when mutual is set.
func (p *PKI) ServerArgs(mutual bool) []string {
	args := []string{"--tls-cert", p.ServerCert, "--tls-key", p.ServerKey}
	if mutual {
		args = append(args, "--tls-client-ca", p.CA)
	}
	return args
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewPKI makes the certificates (ECDSA P-256, valid for a day).
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{dir: t.TempDir()}
	ca := p.newCA(t, "streamer test CA")
	p.ca = ca
	other := p.newCA(t, "another CA")
	p.CA = p.writeCert(t, "ca.pem", ca.cert.Raw)
	server := &x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	p.ServerCert, p.ServerKey = p.issue(t, "server", ca, server)
	client := &x509.Certificate{Subject: pkix.Name{CommonName: "collector"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	p.ClientCert, p.ClientKey = p.issue(t, "client", ca, client)
	stranger := &x509.Certificate{Subject: pkix.Name{CommonName: "stranger"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	p.StrangerCert, p.StrangerKey = p.issue(t, "stranger", other, stranger)
	return p
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func (p *PKI) newCA(t testing.TB, name string) issuer {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return issuer{cert: cert, key: key}
}

func (p *PKI) issue(t testing.TB, name string, by issuer, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, by.cert, &key.PublicKey, by.key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(p.dir, name+".key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p.writeCert(t, name+".pem", der), keyFile
}

func (p *PKI) writeCert(t testing.TB, name string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// IssueClient makes one more client certificate of the CA, with subject CN `name` and `name` as its DNS
// subject alternative name (the tenants tests tell clients apart by it); its PEM files.
func (p *PKI) IssueClient(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	if p.ca.cert == nil {
		t.Fatal("IssueClient: the PKI has no CA key (make it with NewPKI)")
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	return p.issue(t, name, p.ca, tmpl)
}
