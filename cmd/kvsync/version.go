package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; without
// it the module version from the build info is used.
var version = ""

// VersionCommand prints version, commit and Go version from the build info.
type VersionCommand struct{ io ioStreams }

// Run implements command.
func (c *VersionCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("version", c.io.err)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	v, commit, modified, goVersion := buildInfo()
	dirty := ""
	if modified {
		dirty = " (modified)"
	}
	fmt.Fprintf(c.io.out, "kvsync %s\ncommit %s%s\n%s\n", v, commit, dirty, goVersion)
	return nil
}

func buildInfo() (v, commit string, modified bool, goVersion string) {
	v, commit = version, "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return orDevel(v), commit, false, "unknown"
	}
	if v == "" {
		v = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return orDevel(v), commit, modified, bi.GoVersion
}

func orDevel(v string) string {
	if v == "" || v == "(devel)" {
		return "devel"
	}
	return v
}
