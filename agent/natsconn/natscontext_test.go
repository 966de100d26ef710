package natsconn

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// contextHome points XDG_CONFIG_HOME and HOME at fresh folders and returns
// the context folder, created.
func contextHome(t *testing.T) (home, dir string) {
	t.Helper()
	home = t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "xdg"))
	dir = filepath.Join(home, "xdg", "nats", "context")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return home, dir
}

func writeCtxFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadContext(t *testing.T) {
	home, dir := contextHome(t)
	t.Setenv("SECRETS", "/run/secrets")
	writeCtxFile(t, filepath.Join(dir, "prod.json"), `{
		"description": "production",
		"url": "nats://a:4222,nats://b:4222",
		"token": "tok", "user": "u", "password": "p",
		"creds": "~/creds/app.creds",
		"nkey": "$SECRETS/app.nk",
		"cert": "${SECRETS}/tls.crt", "key": "/abs/tls.key", "ca": "~",
		"jetstream_domain": "hub", "jetstream_api_prefix": "$JS.x.API",
		"inbox_prefix": "_I", "user_jwt": "jwt", "user_seed": "seed", "tls_first": true,
		"socks_proxy": "ignored"
	}`)

	c, err := LoadContext("prod")
	if err != nil {
		t.Fatalf("LoadContext: %v", err)
	}
	for _, tc := range []struct{ field, got, want string }{
		{"Name", c.Name, "prod"},
		{"Description", c.Description, "production"},
		{"URL", c.URL, "nats://a:4222,nats://b:4222"},
		{"Token", c.Token, "tok"},
		{"User", c.User, "u"},
		{"Password", c.Password, "p"},
		{"Creds", c.Creds, filepath.Join(home, "creds/app.creds")},
		{"NKey", c.NKey, "/run/secrets/app.nk"},
		{"Cert", c.Cert, "/run/secrets/tls.crt"},
		{"Key", c.Key, "/abs/tls.key"},
		{"CA", c.CA, home},
		{"JetStreamDomain", c.JetStreamDomain, "hub"},
		// Not a path: no expansion.
		{"JetStreamAPIPrefix", c.JetStreamAPIPrefix, "$JS.x.API"},
		{"InboxPrefix", c.InboxPrefix, "_I"},
		{"UserJWT", c.UserJWT, "jwt"},
		{"UserSeed", c.UserSeed, "seed"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s=%q, want %q", tc.field, tc.got, tc.want)
		}
	}
	if !c.TLSFirst {
		t.Errorf("TLSFirst=false, want true")
	}

	// A path ending in .json is read as a file.
	path := filepath.Join(t.TempDir(), "mounted.json")
	writeCtxFile(t, path, `{"url": "nats://mounted:4222"}`)
	c, err = LoadContext(path)
	if err != nil {
		t.Fatalf("LoadContext(%s): %v", path, err)
	}
	if got, want := c.URL, "nats://mounted:4222"; got != want {
		t.Fatalf("URL=%q, want %q", got, want)
	}
}

func TestLoadContextErrors(t *testing.T) {
	_, dir := contextHome(t)
	writeCtxFile(t, filepath.Join(dir, "broken.json"), `{"url": `)
	for _, tc := range []struct {
		name     string
		want     string
		notFound bool
	}{
		{"missing", dir, true},
		{"broken", "parse nats context", false},
		{"../escape", "not a valid context name", false},
		{"", "not a valid context name", false},
		{"..", "not a valid context name", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadContext(tc.name)
			if err == nil {
				t.Fatalf("LoadContext(%q): no error", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			if got, want := errors.Is(err, ErrContextNotFound), tc.notFound; got != want {
				t.Fatalf("errors.Is(err, ErrContextNotFound)=%v, want %v (err %v)", got, want, err)
			}
		})
	}
}

func TestContextDir(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, tc := range []struct{ xdg, want string }{
		{"", filepath.Join(home, ".config", "nats", "context")},
		{"/etc/xdg", "/etc/xdg/nats/context"},
	} {
		t.Setenv("XDG_CONFIG_HOME", tc.xdg)
		got, err := contextDir()
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Fatalf("XDG_CONFIG_HOME=%q: contextDir()=%q, want %q", tc.xdg, got, tc.want)
		}
	}
}

func TestSelectedContext(t *testing.T) {
	_, dir := contextHome(t)
	got, err := SelectedContext()
	if err != nil || got != "" {
		t.Fatalf("without context.txt: SelectedContext()=%q, %v; want \"\", nil", got, err)
	}
	writeCtxFile(t, filepath.Join(filepath.Dir(dir), "context.txt"), "prod\n")
	got, err = SelectedContext()
	if err != nil {
		t.Fatal(err)
	}
	if want := "prod"; got != want {
		t.Fatalf("SelectedContext()=%q, want %q", got, want)
	}
}
