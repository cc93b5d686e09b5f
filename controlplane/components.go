package main

// The three upstream components, each started through the same exported functions its cobra
// command's RunE calls (options → Complete/Config/Setup → Run), with its own flag sets so every
// upstream flag still works through --apiserver-arg and friends. Not the cobra commands
// themselves: kube-apiserver's NewAPIServerCommand and kube-scheduler's runCommand each call
// genericapiserver.SetupSignalHandler, which panics when called twice in one process
// ("close of closed channel"), and neither lets the caller cancel it. Here one context, cancelled
// by SIGTERM or by any component failing, stops all three.

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/server/flagz"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	cliflag "k8s.io/component-base/cli/flag"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// components holds the three components' parsed options.
type components struct {
	apiserver *apiserveroptions.ServerRunOptions
	kcm       *kcmoptions.KubeControllerManagerOptions
	scheduler *scheduleroptions.Options
}

// parseComponents builds each component's options from Kiln's flags and the user's extra ones
// (which replace Kiln's values of the same flags). All three share the process's feature gates
// and component-version registry: they are set once, after every flag is parsed.
func parseComponents(c *config) (*components, error) {
	// Several components apply the same logging options; only a conflicting change is an error.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	// Every options constructor first: the first flag registration closes the shared feature
	// gates to new features, and the scheduler's constructor registers its flags itself.
	api := apiserveroptions.NewServerRunOptions()
	cm, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager options: %w", err)
	}
	apiFlags := api.Flags()
	api.Flagz = flagz.NamedFlagSetsReader{FlagSets: apiFlags}
	cmFlags := cm.Flags(kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases())
	cm.ParsedFlags = &cmFlags
	sched := scheduleroptions.NewOptions()

	if err := parseInto("kube-apiserver", apiFlags, withOverrides(apiserverArgs(c), c.apiserverArgs)); err != nil {
		return nil, err
	}
	if err := parseInto("kube-controller-manager", cmFlags, withOverrides(controllerArgs(c), c.controllerArgs)); err != nil {
		return nil, err
	}
	if err := parseInto("kube-scheduler", *sched.Flags, withOverrides(schedulerArgs(c), c.schedulerArgs)); err != nil {
		return nil, err
	}
	if err := api.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("feature gates: %w", err)
	}
	fg := utilfeature.DefaultMutableFeatureGate
	for name, l := range map[string]*logsapi.LoggingConfiguration{"kube-apiserver": api.Logs, "kube-controller-manager": cm.Logs, "kube-scheduler": sched.Logs} {
		if err := logsapi.ValidateAndApply(l, fg); err != nil {
			return nil, fmt.Errorf("%s logging flags (logging is one per process: give them once, the same for all): %w", name, err)
		}
	}
	return &components{apiserver: api, kcm: cm, scheduler: sched}, nil
}

// withOverrides is Kiln's flags for a component without those the user gives, then the user's:
// a user's flag replaces Kiln's value whole, list flags (--etcd-servers, --tls-san…) included,
// which appending to it would not.
func withOverrides(kiln, user []string) []string {
	given := map[string]bool{}
	for _, a := range user {
		given[flagName(a)] = true
	}
	out := make([]string, 0, len(kiln)+len(user))
	for _, a := range kiln {
		if !given[flagName(a)] {
			out = append(out, a)
		}
	}
	return append(out, user...)
}

// flagName is "name" of "--name=value" or "--name".
func flagName(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	return name
}

func parseInto(name string, sets cliflag.NamedFlagSets, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, f := range sets.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s flags: %w", name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s flags: stray arguments %q", name, fs.Args())
	}
	return nil
}

// addMetrics registers the feature-gate and component-version metrics, once per process.
func (k *components) addMetrics() {
	reg := k.apiserver.GenericServerRunOptions.ComponentGlobalsRegistry
	reg.FeatureGateFor(basecompatibility.DefaultKubeComponent).(featuregate.MutableFeatureGate).AddMetrics()
	reg.AddMetrics()
}

// runAPIServer completes and validates the API server's options and serves until ctx ends.
func (k *components) runAPIServer(ctx context.Context) error {
	completed, err := k.apiserver.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	return apiserver.Run(ctx, completed)
}

// runControllerManager runs kube-controller-manager's controllers until ctx ends.
func (k *components) runControllerManager(ctx context.Context) error {
	cfg, err := k.kcm.Config(ctx, kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases())
	if err != nil {
		return err
	}
	return kcm.Run(ctx, cfg.Complete())
}

// runScheduler runs kube-scheduler until ctx ends.
func (k *components) runScheduler(ctx context.Context) error {
	if k.scheduler.InformerName == nil {
		n, err := cache.NewInformerName("kube-scheduler")
		if err != nil {
			return err
		}
		k.scheduler.InformerName = n
	}
	cc, sched, err := scheduler.Setup(ctx, k.scheduler)
	if err != nil {
		return err
	}
	return scheduler.Run(ctx, cc, sched)
}

// Kiln's flags for each component. A single node: no leader election (a lost lease makes a
// component exit the whole process), the controller manager and scheduler serve no port.
func apiserverArgs(c *config) []string {
	args := []string{
		"--etcd-servers=" + c.etcdURL(),
		"--bind-address=" + c.bindAddress,
		"--advertise-address=" + c.advertiseAddress,
		fmt.Sprintf("--secure-port=%d", c.securePort),
		"--tls-cert-file=" + c.pki("apiserver.crt"),
		"--tls-private-key-file=" + c.pki("apiserver.key"),
		"--client-ca-file=" + c.pki("ca.crt"),
		"--kubelet-client-certificate=" + c.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + c.pki("apiserver-kubelet-client.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki("sa.pub"),
		"--service-account-signing-key-file=" + c.pki("sa.key"),
		"--service-cluster-ip-range=" + c.serviceCIDR,
		"--allow-privileged=true",
		"--cert-dir=" + c.pki("apiserver-generated"),
		"--profiling=false",
	}
	// The `kubernetes` Service's endpoint is the advertised address, which may not be
	// loopback: a machine with no other address (or a test on 127.0.0.1) keeps no endpoint.
	if ip := net.ParseIP(c.advertiseAddress); ip != nil && ip.IsLoopback() {
		args = append(args, "--endpoint-reconciler-type=none")
	}
	return args
}

func controllerArgs(c *config) []string {
	return []string{
		"--kubeconfig=" + c.kubeconfig("controller-manager"),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + c.pki("sa.key"),
		"--root-ca-file=" + c.pki("ca.crt"),
		"--cluster-signing-cert-file=" + c.pki("ca.crt"),
		"--cluster-signing-key-file=" + c.pki("ca.key"),
		"--profiling=false",
	}
}

func schedulerArgs(c *config) []string {
	return []string{
		"--kubeconfig=" + c.kubeconfig("scheduler"),
		"--leader-elect=false",
		"--secure-port=0",
		"--profiling=false",
	}
}
