package natsconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/kvsync/kvsync/internal/testutil"
)

func TestResolve(t *testing.T) {
	_, dir := contextHome(t)
	writeCtxFile(t, filepath.Join(dir, "full.json"), `{"url": "nats://ctx:4222", "user": "cu", "password": "cp",
		"token": "ct", "ca": "/ctx/ca.pem", "cert": "/ctx/c.pem", "key": "/ctx/k.pem", "jetstream_domain": "hub",
		"user_jwt": "jwt", "user_seed": "seed"}`)
	writeCtxFile(t, filepath.Join(dir, "nourl.json"), `{"creds": "/ctx/app.creds"}`)
	for _, tc := range []struct {
		name string
		in   NATSConfig
		want NATSConfig
		jwt  string // context JWT still in force
	}{
		{"empty", NATSConfig{}, NATSConfig{URL: DefaultURL}, ""},
		{"no context", NATSConfig{URL: "nats://x:1", User: "u"}, NATSConfig{URL: "nats://x:1", User: "u"}, ""},
		{
			"context fills the gaps", NATSConfig{Context: "full"},
			NATSConfig{Context: "full", URL: "nats://ctx:4222", User: "cu", Password: "cp", Token: "ct",
				TLS: TLSConfig{CA: "/ctx/ca.pem", Cert: "/ctx/c.pem", Key: "/ctx/k.pem"}, Domain: "hub"}, "jwt",
		},
		{
			"explicit fields win", NATSConfig{Context: "full", URL: "nats://mine:4222", TLS: TLSConfig{CA: "/my/ca.pem"}, Domain: "leaf"},
			NATSConfig{Context: "full", URL: "nats://mine:4222", User: "cu", Password: "cp", Token: "ct",
				TLS: TLSConfig{CA: "/my/ca.pem", Cert: "/ctx/c.pem", Key: "/ctx/k.pem"}, Domain: "leaf"}, "jwt",
		},
		{
			"explicit credentials replace all of the context's", NATSConfig{Context: "full", Creds: "/my.creds"},
			NATSConfig{Context: "full", URL: "nats://ctx:4222", Creds: "/my.creds",
				TLS: TLSConfig{CA: "/ctx/ca.pem", Cert: "/ctx/c.pem", Key: "/ctx/k.pem"}, Domain: "hub"}, "",
		},
		{
			"context without url", NATSConfig{Context: "nourl"},
			NATSConfig{Context: "nourl", URL: DefaultURL, Creds: "/ctx/app.creds"}, "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, c, err := resolve(tc.in)
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			if got != tc.want {
				t.Fatalf("resolve=%+v\nwant     %+v", got, tc.want)
			}
			jwt := ""
			if c != nil {
				jwt = c.UserJWT
			}
			if jwt != tc.jwt {
				t.Fatalf("context JWT=%q, want %q", jwt, tc.jwt)
			}
		})
	}
	if _, _, err := resolve(NATSConfig{Context: "absent"}); !errors.Is(err, ErrContextNotFound) {
		t.Fatalf("resolve with an unknown context: err=%v, want ErrContextNotFound", err)
	}
}

func TestConnectOnce(t *testing.T) {
	_, dir := contextHome(t)
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	writeCtxFile(t, seedFile, string(seed))
	s := testutil.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "s3cret"}}
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
	})
	url := s.ClientURL()
	writeCtxFile(t, filepath.Join(dir, "app.json"), `{"url": "`+url+`", "user": "app", "password": "s3cret"}`)
	dead := "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(testutil.FreePort(t)))

	for _, tc := range []struct {
		name string
		cfg  NATSConfig
		want string // error substring; "" is success
	}{
		{"user and password", NATSConfig{URL: url, User: "app", Password: "s3cret", Name: "test-conn"}, ""},
		{"nkey seed file", NATSConfig{URL: url, NKey: seedFile}, ""},
		{"context", NATSConfig{Context: "app"}, ""},
		{"url list with a dead server first", NATSConfig{URL: dead + " , " + url, User: "app", Password: "s3cret"}, ""},
		{"wrong password", NATSConfig{URL: url, User: "app", Password: "nope"}, "uthorization"},
		{"explicit user over context", NATSConfig{Context: "app", User: "app", Password: "nope"}, "uthorization"},
		{"missing nkey file", NATSConfig{URL: url, NKey: filepath.Join(dir, "none.nk")}, "read nkey seed"},
		{"dead server", NATSConfig{URL: dead}, "connect to " + dead},
		{"password kept out of errors", NATSConfig{URL: "nats://u:hunter2@" + strings.TrimPrefix(dead, "nats://")}, "xxxxx"},
		{"unknown context", NATSConfig{Context: "absent"}, "not found"},
		{"cert without key", NATSConfig{URL: url, TLS: TLSConfig{Cert: "/c.pem"}}, "cert and key go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := ConnectOnce(context.Background(), tc.cfg)
			if tc.want != "" {
				if err == nil {
					nc.Close()
					t.Fatalf("ConnectOnce: no error, want %q", tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %q does not contain %q", err, tc.want)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ConnectOnce: %v", err)
			}
			defer nc.Close()
			if !nc.IsConnected() {
				t.Fatalf("status %v, want connected", nc.Status())
			}
			if got, want := nc.Opts.MaxReconnect, -1; got != want {
				t.Fatalf("MaxReconnect=%d, want %d", got, want)
			}
			if got, want := nc.Opts.PingInterval, DefaultPingInterval; got != want {
				t.Fatalf("PingInterval=%v, want %v", got, want)
			}
			want := tc.cfg.Name
			if want == "" {
				want = "kvsync"
			}
			if got := nc.Opts.Name; got != want {
				t.Fatalf("connection name=%q, want %q", got, want)
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ConnectOnce(ctx, NATSConfig{URL: url, User: "app", Password: "s3cret"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("ConnectOnce with a done ctx: err=%v, want context.Canceled", err)
	}
}

// TestConnectWaitsForServer: Connect does not fail on a server that is down;
// it connects when the server comes, and again after a restart.
func TestConnectWaitsForServer(t *testing.T) {
	port := testutil.FreePort(t)
	store := t.TempDir()
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	reconnected := make(chan struct{}, 4)
	nc, err := Connect(context.Background(), NATSConfig{URL: url},
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }),
		nats.ConnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	if err != nil {
		t.Fatalf("Connect to a server that is down: %v", err)
	}
	defer nc.Close()
	if nc.IsConnected() {
		t.Fatalf("connected with no server")
	}
	start := func() *server.Server {
		return testutil.RunServer(t, func(o *server.Options) { o.Port, o.StoreDir = port, store })
	}
	s := start()
	testutil.CheckFor(t, 15*time.Second, testutil.True("not connected after the server started", nc.IsConnected))
	js, err := JetStream(nc, NATSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "b"}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}

	s.Shutdown()
	testutil.CheckFor(t, 10*time.Second, testutil.True("still connected after shutdown", func() bool { return !nc.IsConnected() }))
	start()
	testutil.CheckFor(t, 15*time.Second, testutil.True("not reconnected after restart", nc.IsConnected))
	if _, err := js.KeyValue(context.Background(), "b"); err != nil {
		t.Fatalf("bucket after restart: %v", err)
	}
}

func TestJetStreamDomain(t *testing.T) {
	_, dir := contextHome(t)
	s := testutil.RunServer(t, func(o *server.Options) { o.JetStreamDomain = "hub" })
	writeCtxFile(t, filepath.Join(dir, "hub.json"), `{"url": "`+s.ClientURL()+`", "jetstream_domain": "hub"}`)
	writeCtxFile(t, filepath.Join(dir, "other.json"), `{"url": "`+s.ClientURL()+`", "jetstream_domain": "elsewhere"}`)
	for _, tc := range []struct {
		name string
		cfg  NATSConfig
		ok   bool
	}{
		{"domain", NATSConfig{URL: s.ClientURL(), Domain: "hub"}, true},
		{"no domain", NATSConfig{URL: s.ClientURL()}, true},
		{"context domain", NATSConfig{Context: "hub"}, true},
		{"explicit domain over context", NATSConfig{Context: "other", Domain: "hub"}, true},
		{"wrong domain", NATSConfig{URL: s.ClientURL(), Domain: "elsewhere"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := ConnectOnce(context.Background(), tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := JetStream(nc, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(ctx)
			if got, want := err == nil, tc.ok; got != want {
				t.Fatalf("AccountInfo err=%v, want success=%v", err, want)
			}
		})
	}
}

func TestReconnectDelay(t *testing.T) {
	for _, tc := range []struct {
		attempts int
		base     time.Duration
	}{
		{0, 100 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 600 * time.Millisecond},
		{5, 600 * time.Millisecond},
		{100, 600 * time.Millisecond},
		{1 << 30, 600 * time.Millisecond},
	} {
		for range 50 {
			d := reconnectDelay(tc.attempts)
			if d < tc.base/2 || d > tc.base {
				t.Fatalf("reconnectDelay(%d)=%v, want in [%v, %v]", tc.attempts, d, tc.base/2, tc.base)
			}
		}
	}
}

func TestServerListAndRedact(t *testing.T) {
	for _, tc := range []struct{ in, list, redacted string }{
		{"nats://a:1", "nats://a:1", "nats://a:1"},
		{" nats://a:1 , ,nats://b:2,", "nats://a:1,nats://b:2", "nats://a:1,nats://b:2"},
		{"nats://u:pw@a:1,nats://tok@b:2", "nats://u:pw@a:1,nats://tok@b:2", "nats://u:xxxxx@a:1,nats://xxxxx@b:2"},
	} {
		if got := serverList(tc.in); got != tc.list {
			t.Fatalf("serverList(%q)=%q, want %q", tc.in, got, tc.list)
		}
		if got := redact(serverList(tc.in)); got != tc.redacted {
			t.Fatalf("redact(%q)=%q, want %q", tc.in, got, tc.redacted)
		}
	}
}

// tlsFiles writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, as PEM files in dir.
func tlsFiles(t *testing.T, dir string) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	srvCert, srvKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	cliCert, cliKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return ca, srvCert, srvKey, cliCert, cliKey
}

// TestConnectTLS: a server that wants TLS and a client certificate takes the
// CA and client certificate from the config, or from a context.
func TestConnectTLS(t *testing.T) {
	_, dir := contextHome(t)
	pki := t.TempDir()
	ca, srvCert, srvKey, cliCert, cliKey := tlsFiles(t, pki)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: ca, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	s := testutil.RunServer(t, func(o *server.Options) {
		o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = tc, true, true, 2
	})
	url := "tls://127.0.0.1:" + strconv.Itoa(s.Addr().(*net.TCPAddr).Port)
	t.Setenv("PKI", pki)
	writeCtxFile(t, filepath.Join(dir, "tls.json"),
		`{"url": "`+url+`", "ca": "$PKI/ca.pem", "cert": "${PKI}/client.pem", "key": "$PKI/client-key.pem"}`)
	for _, tc := range []struct {
		name string
		cfg  NATSConfig
		ok   bool
	}{
		{"ca and client cert", NATSConfig{URL: url, TLS: TLSConfig{CA: ca, Cert: cliCert, Key: cliKey}}, true},
		{"from context", NATSConfig{Context: "tls"}, true},
		{"no client cert", NATSConfig{URL: url, TLS: TLSConfig{CA: ca}}, false},
		{"unknown CA", NATSConfig{URL: url, TLS: TLSConfig{CA: cliCert, Cert: cliCert, Key: cliKey}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := ConnectOnce(context.Background(), tc.cfg)
			if got, want := err == nil, tc.ok; got != want {
				t.Fatalf("ConnectOnce err=%v, want success=%v", err, want)
			}
			if err != nil {
				return
			}
			defer nc.Close()
			if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
				t.Fatalf("not a TLS connection: %v", err)
			}
		})
	}
}

// TestReconnectDelayJitter: agents reconnecting after one server restart
// spread their attempts over [base/2, base].
func TestReconnectDelayJitter(t *testing.T) {
	for _, tc := range []struct {
		attempts int
		base     time.Duration
	}{{1, 100 * time.Millisecond}, {3, 400 * time.Millisecond}, {50, 600 * time.Millisecond}} {
		agent := uint64(0)
		testutil.Spread(t, "reconnect", 1000, tc.base/2, tc.base, func() time.Duration {
			agent++
			return reconnectDelayWith(tc.attempts, testutil.Seeded(agent))
		})
	}
}
