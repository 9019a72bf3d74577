// Command etcd is etcd's own server entry point, built from the Go module
// proxy for Herald's test environment (scripts/testenv.sh). etcd's modules
// carry replace directives, so `go install go.etcd.io/etcd/v3@version` does
// not work; this consumer module requires the published sibling modules
// instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
