package templates

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fileRoot makes a folder with files, an inner symlink and links that lead
// out, opens it as an os.Root and returns Options reading from it.
func fileRoot(t *testing.T) Options {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "secret")
	for path, body := range map[string]string{
		filepath.Join(root, "ca.pem"):          "CERT\n",
		filepath.Join(root, "sub", "motd.txt"): "hello",
		filepath.Join(root, "big"):             strings.Repeat("x", 100),
		outside:                                "TOP SECRET",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		filepath.Join(root, "inner"):          "sub/motd.txt",
		filepath.Join(root, "escape"):         "../secret",
		filepath.Join(root, "absolute"):       outside,
		filepath.Join(root, "sub", "escape2"): "../../secret",
		filepath.Join(root, "dirlink"):        "..",
	} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return Options{DefaultBucket: "app", Files: r.FS(), FileRoot: root, MaxOutput: 64}
}

func TestFile(t *testing.T) {
	o := fileRoot(t)
	for _, tt := range []struct {
		name, arg string
		want      string
		wantErr   string
	}{
		{"relative", "ca.pem", "CERT\n", ""},
		{"nested", "sub/motd.txt", "hello", ""},
		{"absolute inside", filepath.Join(o.FileRoot, "sub", "motd.txt"), "hello", ""},
		{"dot segments that stay inside", "sub/../ca.pem", "CERT\n", ""},
		{"symlink inside", "inner", "hello", ""},
		{"dot dot", "../secret", "", "leads out of file_root"},
		{"dot dot deeper", "sub/../../secret", "", "leads out of file_root"},
		{"absolute outside", filepath.Join(filepath.Dir(o.FileRoot), "secret"), "", "leads out of file_root"},
		{"absolute prefix sibling", o.FileRoot + "2/x", "", "leads out of file_root"},
		{"symlink escaping", "escape", "", "escapes from parent"},
		{"absolute symlink", "absolute", "", "file \"absolute\""},
		{"nested symlink escaping", "sub/escape2", "", "escapes from parent"},
		{"through a symlinked parent", "dirlink/secret", "", "escapes from parent"},
		{"folder", "sub", "", "not a regular file"},
		{"root itself", ".", "", "not a regular file"},
		{"missing", "nope", "", "no such file"},
		{"empty", "", "", "empty path"},
		{"over the output limit", "big", "", "output too large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustParseOpts(t, `{{ file `+quote(tt.arg)+` }}`, o)
			res, err := tmpl.Render(context.Background(), fixture())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("file %q: error %v, want %q", tt.arg, err, tt.wantErr)
				}
				if strings.Contains(string(res.Output), "SECRET") || (err != nil && strings.Contains(err.Error(), "SECRET")) {
					t.Fatal("the secret outside the root was read")
				}
				return
			}
			if err != nil {
				t.Fatalf("file %q: %v", tt.arg, err)
			}
			if got := string(res.Output); got != tt.want {
				t.Fatalf("file %q=%q, want %q", tt.arg, got, tt.want)
			}
		})
	}
}

func quote(s string) string { return strconv.Quote(s) }

func TestFileNeedsRoot(t *testing.T) {
	_, err := Parse("t", `{{ file "x" }}`, Options{})
	if err == nil || !strings.Contains(err.Error(), "needs file_root") {
		t.Fatalf("Parse error %v, want needs file_root", err)
	}
	// A computed call cannot hide from the check: the name is in the text.
	_, err = Parse("t", `{{ "x" | file }}`, Options{})
	if err == nil {
		t.Fatal("piped file without a root parsed")
	}
	if _, err := readFile(&Options{}, "x"); err == nil || !strings.Contains(err.Error(), "no file_root") {
		t.Fatalf("readFile without Files: %v", err)
	}
}

func TestUnderRoot(t *testing.T) {
	for _, tt := range []struct {
		root, name, want string
		escapes          bool
	}{
		{"/srv/f", "a/b", "a/b", false},
		{"/srv/f", "/srv/f/a", "a", false},
		{"/srv/f/", "/srv/f/a/../b", "b", false},
		{"/srv/f", "/srv/f", ".", false},
		{"/srv/f", "a/../../b", "", true},
		{"/srv/f", "/srv/fx/a", "", true},
		{"/srv/f", "/etc/passwd", "", true},
		{"", "/etc/passwd", "", true},
		{"/srv/f", "..", "", true},
	} {
		got, err := underRoot(tt.root, tt.name)
		if tt.escapes {
			if !errors.Is(err, errEscapes) {
				t.Errorf("underRoot(%q, %q)=%q, %v; want errEscapes", tt.root, tt.name, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("underRoot(%q, %q)=%q, %v; want %q", tt.root, tt.name, got, err, tt.want)
		}
	}
}

func addr(iface string, flags net.Flags, ip string) hostAddr {
	return hostAddr{iface: iface, flags: flags, ip: netip.MustParseAddr(ip)}
}

func TestPickPrivateIP(t *testing.T) {
	up := net.FlagUp | net.FlagBroadcast
	for _, tt := range []struct {
		name  string
		addrs []hostAddr
		want  string // "" : an error
	}{
		{"first private of first up interface", []hostAddr{addr("lo", net.FlagUp|net.FlagLoopback, "127.0.0.1"), addr("eth0", up, "203.0.113.7"), addr("eth0", up, "10.1.2.3"), addr("eth1", up, "192.168.0.5")}, "10.1.2.3"},
		{"172.16/12", []hostAddr{addr("eth0", up, "172.31.255.1")}, "172.31.255.1"},
		{"172.32 is public", []hostAddr{addr("eth0", up, "172.32.0.1"), addr("eth0", up, "192.168.1.1")}, "192.168.1.1"},
		{"down interface skipped", []hostAddr{addr("eth0", net.FlagBroadcast, "10.0.0.1"), addr("eth1", up, "10.0.0.2")}, "10.0.0.2"},
		{"loopback skipped even with a private address", []hostAddr{addr("lo", net.FlagUp|net.FlagLoopback, "10.0.0.1")}, ""},
		{"IPv6 ULA is not IPv4", []hostAddr{addr("eth0", up, "fd00::1")}, ""},
		{"link-local and CGNAT are not RFC 1918", []hostAddr{addr("eth0", up, "169.254.1.1"), addr("eth0", up, "100.64.0.1")}, ""},
		{"none", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pickPrivateIP(tt.addrs)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), "no interface") {
					t.Fatalf("pickPrivateIP=%q, %v; want an error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("pickPrivateIP=%q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestPickInterfaceIP(t *testing.T) {
	as := []hostAddr{addr("eth0", net.FlagUp, "fe80::1"), addr("eth0", net.FlagUp, "203.0.113.7"), addr("eth0", net.FlagUp, "10.0.0.1"), addr("v6only", net.FlagUp, "2001:db8::1"), addr("down0", 0, "10.9.9.9")}
	for _, tt := range []struct{ name, want, wantErr string }{
		{"eth0", "203.0.113.7", ""},
		{"down0", "10.9.9.9", ""},
		{"v6only", "", "has no IPv4 address"},
		{"nope", "", "no interface nope"},
	} {
		got, err := pickInterfaceIP(as, tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("pickInterfaceIP(%s)=%q, %v; want %q", tt.name, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("pickInterfaceIP(%s)=%q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// TestHostFuncsLive renders privateIP, interfaceIP and sockaddr on this host:
// whatever they print must be an address of this host that fits the rule.
func TestHostFuncsLive(t *testing.T) {
	as, err := hostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var lo string
	for _, a := range as {
		if a.flags&net.FlagLoopback != 0 && a.ip.Is4() {
			lo = a.iface
			break
		}
	}
	if lo == "" {
		t.Skip("no loopback interface with an IPv4 address")
	}
	res, err := mustParse(t, `{{ interfaceIP "`+lo+`" }} {{ sockaddr "GetInterfaceIP \"`+lo+`\"" }}`).Render(context.Background(), fixture())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(res.Output)); len(got) != 2 || got[0] != got[1] || !netip.MustParseAddr(got[0]).IsLoopback() {
		t.Fatalf("interfaceIP/sockaddr of %s: %q", lo, res.Output)
	}

	want, wantErr := pickPrivateIP(as)
	res, err = mustParse(t, `{{ privateIP }} {{ sockaddr "GetPrivateIP" }}`).Render(context.Background(), fixture())
	if wantErr != nil {
		if err == nil || !strings.Contains(err.Error(), "no interface") {
			t.Fatalf("privateIP on a host without one: %q, %v", res.Output, err)
		}
		return
	}
	if err != nil || string(res.Output) != want+" "+want {
		t.Fatalf("privateIP=%q, %v; want %s twice", res.Output, err, want)
	}
	ip := netip.MustParseAddr(want)
	if !ip.Is4() || !ip.IsPrivate() || !slices.ContainsFunc(as, func(a hostAddr) bool { return a.ip == ip && a.flags&net.FlagLoopback == 0 }) {
		t.Fatalf("privateIP %s is not a private IPv4 of a non-loopback interface here", ip)
	}
}

func TestSockaddrUnsupported(t *testing.T) {
	for _, arg := range []string{`GetPublicIP`, `GetAllInterfaces | include "flags" "up"`, `GetInterfaceIP eth0`} {
		_, err := mustParse(t, `{{ sockaddr `+quote(arg)+` }}`).Render(context.Background(), fixture())
		if err == nil || !strings.Contains(err.Error(), "only \"GetPrivateIP\"") {
			t.Errorf("sockaddr %q: %v, want the supported forms named", arg, err)
		}
	}
}
