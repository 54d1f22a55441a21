// Command kstatus prints the kstatus status of one Kubernetes object, computed by the real
// library that Flux, kpt and cli-utils' appliers use (sigs.k8s.io/cli-utils/pkg/kstatus), so
// the tests can prove that the operator's conditions mean to those tools what they should.
//
//	kubectl get stack web -n team-a -o json | kstatus
//	{"status":"InProgress","message":"..."}
//
// It reads the object as JSON on stdin and prints one JSON line; it exits non-zero only when
// the input is not an object or kstatus cannot compute a status.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// Unstructured's own decoder, not encoding/json: it keeps integers as int64, which the
	// library's generation checks require.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("stdin is not a Kubernetes object in JSON: %w", err)
	}
	result, err := status.Compute(obj)
	if err != nil {
		return fmt.Errorf("computing the status: %w", err)
	}
	return json.NewEncoder(out).Encode(output{Status: result.Status.String(), Message: result.Message})
}
