// Command otelapp is an application instrumented with the OpenTelemetry Go SDK, and nothing of streamer: a
// queue-depth gauge and an orders counter, exported over OTLP gRPC by the SDK's otlpmetricgrpc exporter with
// its default settings (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317). Pointed at streamer, its spikes
// show on `streamer watch`. With -spike N the N-th collection carries one spike in both.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

var (
	interval    = flag.Duration("interval", 10*time.Second, "how often the SDK collects and exports")
	service     = flag.String("service", "checkout", "service.name of the resource")
	spike       = flag.Int("spike", 0, "the collection (from 1) that carries a spike; 0: none")
	collections = flag.Int("collections", 0, "exit after this many collections; 0: run until SIGINT/SIGTERM")
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	host, _ := os.Hostname()
	if err := run(ctx, config{interval: *interval, service: *service, host: host, spike: *spike,
		collections: *collections}); err != nil {
		log.Fatal(err)
	}
}

type config struct {
	interval      time.Duration
	service, host string
	spike         int // the collection (from 1) with the spike; 0: none
	collections   int // stop after this many; 0: until ctx ends
}

// app's instruments are read by one callback at each collection: the queue holds 50 +- 1 jobs and 1000
// orders a second come in (+- 20 at each collection), until the spike collection adds 500 jobs and 10^6 orders.
type app struct {
	mu      sync.Mutex
	n       int // collections so far
	started time.Time
	done    chan struct{}
	cfg     config
}

func (a *app) observe(_ context.Context, o metric.Observer, depth metric.Float64ObservableGauge,
	orders metric.Int64ObservableCounter) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	noise := -1.0
	if a.n%2 == 0 {
		noise = 1
	}
	jobs, total := 50+noise, 1000*time.Since(a.started).Seconds()+10*(noise+1)
	if a.cfg.spike > 0 && a.n == a.cfg.spike {
		jobs += 500
	}
	if a.cfg.spike > 0 && a.n >= a.cfg.spike {
		total += 1e6
	}
	o.ObserveFloat64(depth, jobs, metric.WithAttributes(attribute.String("queue", "main")))
	o.ObserveInt64(orders, int64(total), metric.WithAttributes(attribute.String("kind", "web")))
	if a.cfg.collections > 0 && a.n == a.cfg.collections {
		close(a.done)
	}
	return nil
}

func run(ctx context.Context, cfg config) error {
	// No options: the endpoint, TLS, headers and compression come from OTEL_EXPORTER_OTLP_* or the defaults.
	exporter, err := otlpmetricgrpc.New(ctx)
	if err != nil {
		return fmt.Errorf("otlp exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", cfg.service), attribute.String("host.name", cfg.host)))
	if err != nil {
		return fmt.Errorf("resource: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exporter, sdkmetric.WithInterval(cfg.interval))))
	meter := provider.Meter("otelapp")
	depth, err := meter.Float64ObservableGauge("queue.depth", metric.WithDescription("jobs waiting"))
	if err != nil {
		return err
	}
	orders, err := meter.Int64ObservableCounter("orders", metric.WithDescription("orders taken"))
	if err != nil {
		return err
	}
	a := &app{started: time.Now(), done: make(chan struct{}), cfg: cfg}
	if _, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		return a.observe(ctx, o, depth, orders)
	}, depth, orders); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-a.done:
	}
	// Shutdown exports what was collected last; its own deadline, as ctx may be done already.
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := provider.Shutdown(shutdown); err != nil {
		return fmt.Errorf("otel shutdown: %w", err)
	}
	return nil
}
