/**
 * What a reload (SIGHUP) applies: the reloadable settings reach the objects that hold them, lists in place; the
 * other settings are named as needing a restart and left alone.
 */
import t from 'tap';
import { applyReloadableSettings, defaultConfig } from '../daemon/config.js';

t.test('reloadable settings are applied in place; the rest need a restart', async (t) => {
  const live = defaultConfig();
  const heldByService = live.insecureRegistries;
  const next = { ...defaultConfig(), logLevel: 'debug', insecureRegistries: ['registry.local:5000'], root: '/elsewhere' };
  const { applied, needRestart } = applyReloadableSettings(live, next);
  t.same(applied.sort(), ['insecureRegistries', 'logLevel']);
  t.same(needRestart, ['root'], 'a changed state dir is named, not applied');
  t.equal(live.root, defaultConfig().root);
  t.equal(live.logLevel, 'debug');
  t.equal(live.insecureRegistries, heldByService, 'the list a service holds is the same array');
  t.same(heldByService, ['registry.local:5000'], 'and it now has the new entries');
  t.same(applyReloadableSettings(live, next), { applied: [], needRestart: ['root'] }, 'an unchanged file applies nothing');
});
