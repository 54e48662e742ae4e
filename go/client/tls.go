// TLS for a server started with --tls-cert (and mutual TLS with --tls-client-ca).

package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
)

// TLSConfig is the client's TLS configuration from PEM files: caFile is the CA that signed the server's
// certificate ("": the system's roots); certFile and keyFile are this client's certificate and key, for a
// server that requires one (mTLS; both or neither).
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a TLS client certificate needs its key, and a key its certificate")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// WithTransportCredentials replaces the default plaintext transport, e.g. with credentials.NewTLS(cfg).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(s *settings) { s.creds = creds }
}

// WithTLS connects over TLS with cfg (see TLSConfig).
func WithTLS(cfg *tls.Config) Option { return WithTransportCredentials(credentials.NewTLS(cfg)) }
