// Tenants by client certificate, from Go: the generated admin client (go/pb) against the real Python server
// under mTLS with a [tenants] config file; another tenant's session and a non-admin's admin call are refused.

package client_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

const tenantsConfig = `
[tenants]
identity = "subject"
admin = ["ops"]

[[tenants.map]]
identity = "team-a-collector"
tenant = "team-a"

[[tenants.map]]
identity = "team-b-collector"
tenant = "team-b"
`

func dialTLS(t *testing.T, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// streamOnce sends one batch on `session` and returns the stream's status code.
func streamOnce(t *testing.T, conn *grpc.ClientConn, session string) (codes.Code, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pb.NewOutliersClient(conn).DetectStream(ctx)
	if err != nil {
		return status.Code(err), err.Error()
	}
	req := &pb.OutliersRequest{Session: session, Metrics: []*pb.Metric{client.Metric("cpu", 1, time.Time{})}}
	if err := st.Send(req); err != nil {
		t.Fatalf("send: %v", err)
	}
	if _, err := st.Recv(); err != nil {
		return status.Code(err), err.Error()
	}
	if err := st.CloseSend(); err != nil {
		t.Fatalf("close send: %v", err)
	}
	return codes.OK, ""
}

func TestTenantsFromGo(t *testing.T) {
	pki := testserver.NewPKI(t)
	config := filepath.Join(t.TempDir(), "streamer.toml")
	if err := os.WriteFile(config, []byte(tenantsConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, append(pki.ServerArgs(true), "--config", config)...)
	conn := map[string]*grpc.ClientConn{}
	for _, who := range []string{"team-a-collector", "team-b-collector", "ops"} {
		cert, key := pki.IssueClient(t, who)
		conn[who] = dialTLS(t, srv.Addr, tlsConfig(t, pki.CA, cert, key))
	}
	if code, msg := streamOnce(t, conn["team-b-collector"], "b-owned"); code != codes.OK {
		t.Fatalf("team b on its own session: %v %s", code, msg)
	}
	code, msg := streamOnce(t, conn["team-a-collector"], "b-owned")
	if code != codes.PermissionDenied || !strings.Contains(msg, "'b-owned'") {
		t.Fatalf("team a on team b's session: %v %q, want PermissionDenied naming the session", code, msg)
	}
	if code, msg := streamOnce(t, conn["team-b-collector"], "b-owned"); code != codes.OK {
		t.Fatalf("team b again on its own session: %v %s", code, msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pb.NewAdminClient(conn["team-a-collector"]).ListSessions(ctx, &pb.ListSessionsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ListSessions without the admin role: %v, want PermissionDenied", err)
	}
	resp, err := pb.NewAdminClient(conn["ops"]).ListSessions(ctx, &pb.ListSessionsRequest{})
	if err != nil {
		t.Fatalf("ListSessions as admin: %v", err)
	}
	if len(resp.GetSessions()) != 1 || resp.GetSessions()[0].GetName() != "b-owned" ||
		resp.GetSessions()[0].GetTenant() != "team-b" || resp.GetSessions()[0].GetSeries() != 1 {
		t.Fatalf("ListSessions as admin = %v, want b-owned of team-b with 1 series", resp.GetSessions())
	}
}
