// A program of another module, built by tests/test_go.py with go/README.md's go.mod (a replace
// directive pointing at this checkout): the client's Detect against the real server.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/pb"
)

func main() {
	c, err := client.New(os.Args[1], client.WithTimeout(30*time.Second))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	var batch []*pb.Metric
	for i := 0; i < 20; i++ {
		batch = append(batch, client.Metric("cpu", float64(40+i%5), time.Now()))
	}
	batch = append(batch, client.Metric("cpu", 97.3, time.Now()))
	resp, err := c.Detect(context.Background(), batch, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.GetIndices())
}
