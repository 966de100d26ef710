package agent

import (
	"os"
	"strings"
	"testing"
)

func lookupMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestExpandString(t *testing.T) {
	env := lookupMap(map[string]string{"MYHOST": "web-1", "EMPTY": "", "PORT": "4222"})
	for _, tt := range []struct{ in, want, err string }{
		{in: "/srv/o-${MYHOST}", want: "/srv/o-web-1"},
		{in: "${MYHOST}${MYHOST}", want: "web-1web-1"},
		{in: "nats://h:${PORT:-1}", want: "nats://h:4222"},
		{in: "${UNSET:-dflt}", want: "dflt"},
		{in: "${UNSET:-}", want: ""},
		{in: "${UNSET:-a:-b}", want: "a:-b"},
		{in: "${EMPTY:-x}", want: ""}, // set but empty: the value, as given
		{in: "$${MYHOST}", want: "${MYHOST}"},
		{in: "$$", want: "$"},
		{in: "cost $5 and $HOME, $", want: "cost $5 and $HOME, $"},
		{in: "no dollars", want: "no dollars"},
		{in: "${UNSET}", err: "${UNSET} is not set"},
		{in: "x-${MYHOST", err: "without a closing }"},
		{in: "${}", err: "is not a variable name"},
		{in: "${1A}", err: "is not a variable name"},
		{in: "${A B}", err: "is not a variable name"},
	} {
		got, err := expandString(tt.in, env)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("expandString(%q) err=%v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("expandString(%q)=%q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestExpandConfig(t *testing.T) {
	c := Default()
	c.NATS.URL = "nats://${NATSHOST}:4222"
	c.Agent = AgentConfig{ID: "${POD:-pod-0}", Labels: map[string]string{"region": "${REGION}"}}
	c.Files = []FilesConfig{{Bucket: "app", Dir: "/srv/o-${MYHOST}", Keys: []string{"hosts.${MYHOST}.>"},
		OnChange: &Action{Command: []string{"sh", "-c", "echo ${MYHOST} $$1"}, HTTP: &HTTPAction{Headers: map[string]string{"X-Host": "${MYHOST}"}}}}}
	c.Templates = []TemplateConfig{
		{Text: "{{ key \"a\" }} ${NOT_EXPANDED}", Dest: "/etc/${MYHOST}.conf", OnChange: &Action{Ref: "reload-${MYHOST}"},
			Check: &CheckConfig{Command: []string{"nginx", "-t", "-c", "{{.Path}}", "-g", "${MYHOST}"}}},
		{Text: "x", Dest: "/etc/${UNSET_VAR}.conf", OnChange: &Action{Ref: "${UNSET_REF}"}},
	}
	c.Actions = map[string]Action{"reload-web-1": {Command: []string{"nginx", "-s", "${SIG:-reload}"}}}
	err := c.Expand(lookupMap(map[string]string{"NATSHOST": "n1", "MYHOST": "web-1", "REGION": "eu"}))
	for _, want := range []string{"templates[1].dest: ${UNSET_VAR} is not set", "templates[1].on_change: ${UNSET_REF} is not set"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Expand err=%v, want %s", err, want)
		}
	}
	if n := strings.Count(err.Error(), "is not set"); n != 2 {
		t.Errorf("%d problems reported, want 2: %v", n, err)
	}
	if got := c.Actions["reload-web-1"].Command[2]; got != "reload" {
		t.Errorf("actions.reload-web-1.command[2]=%q, want reload", got)
	}
	if got := c.Templates[0].OnChange.Ref; got != "reload-web-1" {
		t.Errorf("templates[0].on_change=%q, want reload-web-1", got)
	}
	if got := c.Templates[0].Check.Command[3:]; got[0] != "{{.Path}}" || got[2] != "web-1" {
		t.Errorf("templates[0].check.command=%q", got)
	}
	for _, tt := range []struct{ path, got, want string }{
		{"nats.url", c.NATS.URL, "nats://n1:4222"},
		{"agent.id", c.Agent.ID, "pod-0"},
		{"agent.labels.region", c.Agent.Labels["region"], "eu"},
		{"files[0].dir", c.Files[0].Dir, "/srv/o-web-1"},
		{"files[0].keys[0]", c.Files[0].Keys[0], "hosts.web-1.>"},
		{"files[0].on_change.command[2]", c.Files[0].OnChange.Command[2], "echo web-1 $1"},
		{"files[0].on_change.http.headers", c.Files[0].OnChange.HTTP.Headers["X-Host"], "web-1"},
		{"templates[0].text", c.Templates[0].Text, "{{ key \"a\" }} ${NOT_EXPANDED}"},
		{"templates[0].dest", c.Templates[0].Dest, "/etc/web-1.conf"},
		{"templates[1].dest", c.Templates[1].Dest, "/etc/${UNSET_VAR}.conf"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s=%q, want %q", tt.path, tt.got, tt.want)
		}
	}
}

func TestExpandHostnameFallback(t *testing.T) {
	h, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	c := Default()
	c.Agent.ID = "${HOSTNAME}"
	if err := c.Expand(lookupMap(nil)); err != nil {
		t.Fatal(err)
	}
	if c.Agent.ID != h {
		t.Errorf("agent.id=%q, want the host name %q", c.Agent.ID, h)
	}
	c.Agent.ID = "${HOSTNAME}"
	if err := c.Expand(lookupMap(map[string]string{"HOSTNAME": "from-env"})); err != nil || c.Agent.ID != "from-env" {
		t.Errorf("agent.id=%q, %v; want the variable's value", c.Agent.ID, err)
	}
}

func TestValidLabelsAndSelector(t *testing.T) {
	for _, tt := range []struct {
		k, v string
		ok   bool
	}{
		{"role", "web", true}, {"region", "eu-west.1", true}, {"a", "", true}, {"k8s.io_x-y", "V_1", true},
		{"", "x", false}, {"Role", "x", false}, {"-a", "x", false}, {"a-", "x", false}, {"a b", "x", false},
		{"a=b", "x", false}, {"role", "a,b", false}, {"role", "a=b", false}, {"role", "é", false},
		{strings.Repeat("a", 64), "x", false}, {"a", strings.Repeat("v", 64), false},
	} {
		if err := ValidLabel(tt.k, tt.v); (err == nil) != tt.ok {
			t.Errorf("ValidLabel(%q, %q)=%v, want ok=%v", tt.k, tt.v, err, tt.ok)
		}
	}
	sel, err := ParseSelector("role=web, region=eu")
	if err != nil || len(sel) != 2 || sel["role"] != "web" || sel["region"] != "eu" {
		t.Fatalf("ParseSelector=%v, %v", sel, err)
	}
	if !MatchLabels(sel, map[string]string{"role": "web", "region": "eu", "x": "y"}) || MatchLabels(sel, map[string]string{"role": "web"}) {
		t.Errorf("MatchLabels wrong")
	}
	for _, bad := range []string{"role", "role=web,,", "Role=x", "role=a,role=b", "=x"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("ParseSelector(%q): no error", bad)
		}
	}
}

// FuzzExpandString checks the expander on any input: no panic; without an
// error, a string with no $ comes back as is, $$ round-trips, and the output
// never holds a ${ that came from a reference (values here have no $).
func FuzzExpandString(f *testing.F) {
	for _, s := range []string{"", "$", "$$", "${A}", "${A:-b}", "${", "${}", "$${A}", "a${B}c${C:-d}e", "${A:-${B}}", "$$$", "${A-b}", "${:-x}"} {
		f.Add(s)
	}
	env := lookupMap(map[string]string{"A": "va", "B": "vb", "HOSTNAME": "h"})
	f.Fuzz(func(t *testing.T, s string) {
		got, err := expandString(s, env)
		if err != nil {
			if got != s {
				t.Fatalf("on error the input must come back: %q -> %q", s, got)
			}
			return
		}
		if !strings.Contains(s, "$") && got != s {
			t.Fatalf("%q changed to %q without a $", s, got)
		}
		again, err := expandString(strings.ReplaceAll(s, "$", "$$"), env)
		if err != nil || again != s {
			t.Fatalf("escaped %q expands to %q, %v; want the input", s, again, err)
		}
	})
}
