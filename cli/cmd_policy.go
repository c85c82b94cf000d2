package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coffer-kms/coffer/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	ucli "github.com/urfave/cli/v2"
)

// maxPolicyFile bounds a policy file; real ones are a few hundred bytes.
const maxPolicyFile = 1 << 20

func (e *env) policyCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "policy",
		Usage:     "write, list, show and delete access policies",
		UsageText: "coffer policy command [command options] [arguments...]",
		Description: "A policy grants operations (wrap, unwrap, rewrap, datakey, read, create,\n" +
			"rotate, update, delete) on key-name patterns to callers identified by uid,\n" +
			"gid, user, group or systemd unit. Everything not granted is denied.",
		Subcommands: []*ucli.Command{
			e.policyWriteCommand(),
			e.policyListCommand(),
			e.policyShowCommand(),
			e.policyDeleteCommand(),
		},
	}, `coffer policy write billing billing.hcl
coffer policy list`)
}

func policyName(x *cmd) (string, error) {
	name := x.c.Args().First()
	return name, checkName("policy", name)
}

func (e *env) policyWriteCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "write",
		Usage:     "create or replace a policy from a JSON or HCL file",
		UsageText: "coffer policy write NAME FILE",
		Description: "Creates or replaces the policy NAME with the one in FILE (- reads stdin).\n" +
			"FILE is JSON (the API's policy object) or HCL; a name ending in .hcl, or content\n" +
			"that does not start with '{', is read as HCL:\n" +
			"\n" +
			"  subjects {\n" +
			"    uids   = [1001]\n" +
			"    users  = [\"billing\"]\n" +
			"    units  = [\"billing.service\"]\n" +
			"    # gids, groups\n" +
			"  }\n" +
			"  keys       = [\"billing-*\"]\n" +
			"  operations = [\"wrap\", \"unwrap\"]\n" +
			"\n" +
			"Keys are glob patterns (Go path.Match). Unknown attributes are errors.",
	}, `coffer policy write billing billing.hcl
echo '{"subjects":{"units":["billing.service"]},"keys":["billing-*"],"operations":["wrap","unwrap"]}' | coffer policy write billing -`, 2, 2, func(x *cmd) error {
		name, err := policyName(x)
		if err != nil {
			return err
		}
		file := x.c.Args().Get(1)
		var data []byte
		if file == "-" {
			data, err = readAllSecret(x.stdin, 0, maxPolicyFile)
			if err != nil {
				return fmt.Errorf("read the policy from stdin: %w", err)
			}
		} else if data, err = readFileLimited(file, maxPolicyFile, "the policy file"); err != nil {
			return err
		}
		p, err := parsePolicy(file, data)
		if err != nil {
			return err
		}
		if p.Name != "" && p.Name != name {
			return fmt.Errorf("%s names the policy %q but the command names %q: make them agree or drop the name from the file", displayName(file), p.Name, name)
		}
		var out api.Policy
		return x.request(http.MethodPut, api.PolicyPath(name), p, &out, func() error {
			if out.Name == "" {
				out.Name = name
			}
			return printPolicy(x.stdout, &out)
		})
	})
}

func displayName(file string) string {
	if file == "-" {
		return "<stdin>"
	}
	return file
}

// parsePolicy reads a policy in JSON or HCL (see policy write's help).
func parsePolicy(file string, data []byte) (*api.Policy, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%s is empty: it must hold a policy in JSON or HCL", displayName(file))
	}
	var p *api.Policy
	var err error
	if strings.EqualFold(filepath.Ext(file), ".hcl") || trimmed[0] != '{' {
		p, err = parseHCLPolicy(displayName(file), data)
	} else {
		p, err = parseJSONPolicy(displayName(file), data)
	}
	if err != nil {
		return nil, err
	}
	for _, op := range p.Operations {
		if !slices.Contains(api.Operations, op) {
			return nil, fmt.Errorf("%s: unknown operation %q: use %s", displayName(file), op, strings.Join(api.Operations, ", "))
		}
	}
	if (len(p.Keys) == 0 && len(p.Secrets) == 0) || len(p.Operations) == 0 {
		return nil, fmt.Errorf("%s: a policy needs keys (or secrets) and operations", displayName(file))
	}
	// The API shows empty lists as [], not null.
	for _, s := range []*[]string{&p.Keys, &p.Operations, &p.Subjects.Users, &p.Subjects.Groups, &p.Subjects.Units} {
		if *s == nil {
			*s = []string{}
		}
	}
	for _, s := range []*[]uint32{&p.Subjects.UIDs, &p.Subjects.GIDs} {
		if *s == nil {
			*s = []uint32{}
		}
	}
	return p, nil
}

func parseJSONPolicy(name string, data []byte) (*api.Policy, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p api.Policy
	if err := dec.Decode(&p); err != nil {
		offset := dec.InputOffset()
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			offset = se.Offset
		case errors.As(err, &te):
			offset = te.Offset
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			// The decoder reports no position for an unknown field: point
			// at the field's first occurrence.
			quoted := strings.TrimPrefix(err.Error(), "json: unknown field ")
			if i := bytes.Index(data, []byte(quoted)); i >= 0 {
				offset = int64(i)
			}
		}
		return nil, fmt.Errorf("%s:%d: %s", name, lineAt(data, offset), strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s:%d: unexpected data after the policy object", name, lineAt(data, dec.InputOffset()))
	}
	return &p, nil
}

// lineAt returns the 1-based line of a byte offset.
func lineAt(data []byte, offset int64) int {
	offset = min(max(offset, 0), int64(len(data)))
	return bytes.Count(data[:offset], []byte("\n")) + 1
}

type hclPolicy struct {
	Subjects   hclSubjects `hcl:"subjects,block"`
	Keys       []string    `hcl:"keys,optional"`
	Secrets    []string    `hcl:"secrets,optional"`
	Operations []string    `hcl:"operations"`
}

type hclSubjects struct {
	UIDs   []uint32 `hcl:"uids,optional"`
	GIDs   []uint32 `hcl:"gids,optional"`
	Users  []string `hcl:"users,optional"`
	Groups []string `hcl:"groups,optional"`
	Units  []string `hcl:"units,optional"`
}

// parseHCLPolicy decodes the HCL form. gohcl reports unknown attributes and
// blocks, wrong types and missing fields as diagnostics with file:line.
func parseHCLPolicy(name string, data []byte) (*api.Policy, error) {
	f, diags := hclparse.NewParser().ParseHCL(data, name)
	if diags.HasErrors() {
		return nil, hclError(diags)
	}
	var hp hclPolicy
	if diags := gohcl.DecodeBody(f.Body, nil, &hp); diags.HasErrors() {
		return nil, hclError(diags)
	}
	return &api.Policy{
		Subjects: api.Subjects{
			UIDs: hp.Subjects.UIDs, GIDs: hp.Subjects.GIDs,
			Users: hp.Subjects.Users, Groups: hp.Subjects.Groups, Units: hp.Subjects.Units,
		},
		Keys:       hp.Keys,
		Secrets:    hp.Secrets,
		Operations: hp.Operations,
	}, nil
}

// hclError formats diagnostics one per line as "file:line,col: summary; detail".
func hclError(diags hcl.Diagnostics) error {
	var lines []string
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += "; " + d.Detail
		}
		if d.Subject != nil {
			msg = fmt.Sprintf("%s:%d,%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, msg)
		}
		lines = append(lines, msg)
	}
	return errors.New(strings.Join(lines, "\n"))
}

func (e *env) policyListCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "list",
		Usage:       "list the names of all policies",
		UsageText:   "coffer policy list",
		Description: "Lists the names of all policies. 'coffer policy show NAME' prints one.",
	}, `coffer policy list`, 0, 0, func(x *cmd) error {
		var out api.PolicyList
		return x.request(http.MethodGet, api.PathPolicies, nil, &out, func() error {
			return printNames(x.stdout, "NAME", "No policies.", out.Policies)
		})
	})
}

func (e *env) policyShowCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "show",
		Usage:       "print a policy",
		UsageText:   "coffer policy show NAME",
		Description: "Prints a policy's subjects, key patterns and operations.",
	}, `coffer policy show billing
coffer policy show billing --format json > billing.json`, 1, 1, func(x *cmd) error {
		name, err := policyName(x)
		if err != nil {
			return err
		}
		var out api.Policy
		return x.request(http.MethodGet, api.PolicyPath(name), nil, &out, func() error {
			if out.Name == "" {
				out.Name = name
			}
			return printPolicy(x.stdout, &out)
		})
	})
}

func (e *env) policyDeleteCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "delete",
		Usage:       "delete a policy",
		UsageText:   "coffer policy delete NAME",
		Description: "Deletes a policy; the callers it granted lose those rights at once.",
	}, `coffer policy delete billing`, 1, 1, func(x *cmd) error {
		name, err := policyName(x)
		if err != nil {
			return err
		}
		return x.request(http.MethodDelete, api.PolicyPath(name), nil, nil, func() error {
			_, err := fmt.Fprintf(x.stdout, "Deleted policy %s.\n", name)
			return err
		})
	})
}
