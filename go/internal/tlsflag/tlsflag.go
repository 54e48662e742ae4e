// Package tlsflag holds the TLS flags the collector and the load generator share: -tls, -tls-ca, -tls-cert and
// -tls-key, for a server started with --tls-cert (and --tls-client-ca).
package tlsflag

import (
	"crypto/tls"
	"flag"

	"github.com/streamer-dev/streamer/go/client"
)

// Flags are the parsed TLS flags.
type Flags struct {
	on              *bool
	ca, cert, keyFn *string
}

// Register adds the flags to fs (flag.CommandLine in main).
func Register(fs *flag.FlagSet) *Flags {
	return &Flags{
		on:    fs.Bool("tls", false, "connect over TLS, trusting the system's CAs (implied by the other -tls flags)"),
		ca:    fs.String("tls-ca", "", "PEM file of the CA that signed the server's certificate"),
		cert:  fs.String("tls-cert", "", "PEM file of this client's certificate, for a server with --tls-client-ca (mTLS); needs -tls-key"),
		keyFn: fs.String("tls-key", "", "PEM file of the client certificate's key"),
	}
}

// Config is the TLS configuration the flags ask for, or nil for plaintext.
func (f *Flags) Config() (*tls.Config, error) {
	if !*f.on && *f.ca == "" && *f.cert == "" && *f.keyFn == "" {
		return nil, nil
	}
	return client.TLSConfig(*f.ca, *f.cert, *f.keyFn)
}
