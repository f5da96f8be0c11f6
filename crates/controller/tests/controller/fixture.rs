//! A small fixture for the common set-up: one namespace, a controller
//! scoped to it, and providers (verification skipped) that are Ready.
//!
//! ```ignore
//! let Some(w) = World::new("refill").provider("p", 10).ready().await else { return };
//! w.masks(&["m0", "m1"]).await;
//! ```

use super::*;

/// A test's namespace, client and running controller.
pub(crate) struct World {
    pub(crate) client: Client,
    pub(crate) ns: String,
    pub(crate) metrics: Arc<vpno_controller::Metrics>,
    _ctl: Running,
}

/// What [`World::new`] is asked to set up.
pub(crate) struct WorldBuilder {
    prefix: String,
    providers: Vec<ProviderBuilder>,
}

impl World {
    /// A world in a fresh namespace named after `prefix`; `.ready()` builds it.
    #[allow(clippy::new_ret_no_self)] // reads as the scenario: World::new(..).provider(..).ready()
    pub(crate) fn new(prefix: &str) -> WorldBuilder {
        WorldBuilder {
            prefix: prefix.into(),
            providers: Vec::new(),
        }
    }

    /// Creates Masks accepting any provider.
    pub(crate) async fn masks(&self, names: &[&str]) {
        for n in names {
            create_mask(&self.client, &self.ns, n, None).await;
        }
    }

    /// Masks of the namespace in `phase`.
    pub(crate) async fn count(&self, phase: MaskPhase) -> usize {
        masks_in(&self.client, &self.ns)
            .await
            .iter()
            .filter(|m| m.phase() == phase)
            .count()
    }

    /// Names of the Masks in `phase`.
    pub(crate) async fn names_in(&self, phase: MaskPhase) -> Vec<String> {
        masks_in(&self.client, &self.ns)
            .await
            .into_iter()
            .filter(|m| m.phase() == phase)
            .map(|m| m.name_any())
            .collect()
    }

    /// The Mask API of the namespace.
    pub(crate) fn mask_api(&self) -> Api<Mask> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

impl WorldBuilder {
    /// A provider `name` with `slots` slots and its Secret.
    pub(crate) fn provider(mut self, name: &str, slots: u32) -> Self {
        self.providers.push(provider(name, slots));
        self
    }

    /// A provider built by hand (tags, namespaces, verification).
    pub(crate) fn with(mut self, p: ProviderBuilder) -> Self {
        self.providers.push(p);
        self
    }

    /// Sets everything up and waits until every provider is Ready; `None`
    /// when no control plane is available (the test is skipped).
    pub(crate) async fn ready(self) -> Option<World> {
        let (client, mut ns) = setup(&[&self.prefix]).await?;
        let ns = ns.remove(0);
        let metrics = Arc::new(vpno_controller::Metrics::default());
        let ctl = Running::start_with(
            &client,
            ControllerConfig {
                metrics: metrics.clone(),
                ..ControllerConfig::for_namespaces([ns.as_str()])
            },
        );
        let names: Vec<String> = self.providers.iter().map(|p| p.name.clone()).collect();
        for p in self.providers {
            p.create(&client, &ns).await;
        }
        for n in names {
            wait_provider_phase(&client, &ns, &n, ProviderPhase::Ready).await;
        }
        Some(World {
            client,
            ns,
            metrics,
            _ctl: ctl,
        })
    }
}
