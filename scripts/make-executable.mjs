// Marks the compiled entry points executable, so `npm run build` leaves runnable programs in dist/.
import { chmodSync, existsSync } from 'node:fs';
import { readFileSync } from 'node:fs';
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
for (const file of Object.values(pkg.bin)) {
  const full = new URL(`../${file}`, import.meta.url);
  if (existsSync(full)) chmodSync(full, 0o755);
}
