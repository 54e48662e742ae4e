// The Go client over TLS and mutual TLS against the real Python server, with certificates made at test time.

package client_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func spikeBatch() []*pb.Metric {
	batch := make([]*pb.Metric, 0, 10)
	for i := 0; i < 9; i++ {
		batch = append(batch, client.Metric("cpu", 1, time.Time{}))
	}
	return append(batch, client.Metric("cpu", 9, time.Time{}))
}

func tlsConfig(t *testing.T, ca, cert, key string) *tls.Config {
	t.Helper()
	cfg, err := client.TLSConfig(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// detectCode is the status code of one Detect of spikeBatch (codes.OK when it answered [9]).
func detectCode(t *testing.T, addr string, opts ...client.Option) codes.Code {
	t.Helper()
	c := newClient(t, addr, append([]client.Option{client.WithTimeout(10 * time.Second)}, opts...)...)
	resp, err := c.Detect(context.Background(), spikeBatch(), nil)
	if err != nil {
		return status.Code(err)
	}
	if got := resp.GetIndices(); len(got) != 1 || got[0] != 9 {
		t.Fatalf("Detect over TLS = %v, want [9]", got)
	}
	return codes.OK
}

func TestDetectAndStreamOverTLS(t *testing.T) {
	pki := testserver.NewPKI(t)
	srv := testserver.Start(t, pki.ServerArgs(false)...)
	if code := detectCode(t, srv.Addr, client.WithTLS(tlsConfig(t, pki.CA, "", ""))); code != codes.OK {
		t.Fatalf("TLS client: %v", code)
	}
	if code := detectCode(t, srv.Addr); code != codes.Unavailable {
		t.Errorf("plaintext client against a TLS server: %v, want Unavailable", code)
	}
	if code := detectCode(t, srv.Addr, client.WithTLS(&tls.Config{MinVersion: tls.VersionTLS12})); code != codes.Unavailable {
		t.Errorf("client trusting only the system's CAs: %v, want Unavailable", code)
	}
	// a resumable stream over TLS
	c := newClient(t, srv.Addr, client.WithTLS(tlsConfig(t, pki.CA, "", "")))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := c.OpenStream(ctx, client.StreamConfig{Session: "tls-stream"})
	go func() {
		defer st.CloseSend()
		for i := 0; i < 3; i++ {
			if err := st.Send(ctx, []*pb.Metric{client.Metric("a", float64(i), time.Time{})}); err != nil {
				return
			}
		}
	}()
	n := 0
	for range st.Results() {
		n++
	}
	if err := st.Err(); err != nil || n != 3 {
		t.Fatalf("stream over TLS: %d answers, err %v", n, err)
	}
}

func TestMutualTLSRefusesClientsWithoutACertificateOfItsCA(t *testing.T) {
	pki := testserver.NewPKI(t)
	srv := testserver.Start(t, pki.ServerArgs(true)...)
	if code := detectCode(t, srv.Addr, client.WithTLS(tlsConfig(t, pki.CA, pki.ClientCert, pki.ClientKey))); code != codes.OK {
		t.Fatalf("client with a certificate of the CA: %v", code)
	}
	for name, cfg := range map[string]*tls.Config{
		"no client certificate":    tlsConfig(t, pki.CA, "", ""),
		"another CA's certificate": tlsConfig(t, pki.CA, pki.StrangerCert, pki.StrangerKey),
	} {
		if code := detectCode(t, srv.Addr, client.WithTLS(cfg)); code != codes.Unavailable {
			t.Errorf("%s: %v, want Unavailable (refused in the handshake)", name, code)
		}
	}
	if code := detectCode(t, srv.Addr); code != codes.Unavailable {
		t.Errorf("plaintext client: %v, want Unavailable", code)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	pki := testserver.NewPKI(t)
	for name, files := range map[string][3]string{
		"missing CA":         {pki.CA + ".missing", "", ""},
		"CA is not PEM":      {pki.ClientKey + "x", "", ""},
		"certificate alone":  {pki.CA, pki.ClientCert, ""},
		"key of another one": {pki.CA, pki.ClientCert, pki.StrangerKey},
	} {
		if _, err := client.TLSConfig(files[0], files[1], files[2]); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
