// Preloaded into the pinned bcoin node with `node --require` (miner/node/regtest.py).
//
// Why: bcoin 1.0.2's database layer (bdb 0.2.3) was written for leveldown 4, which has
// no prebuilt binaries for current Node.js; package.json overrides leveldown to 6.1.1,
// whose N-API prebuilds load without a compiler. bdb passes unset range bounds as
// `gt/gte/lt/lte: null`, and leveldown 6 (abstract-leveldown 7) serialises a null bound
// as the string "null" instead of ignoring it. Every unbounded iteration then returns
// nothing: on a persistent datadir the wallet cannot initialise ("assert(tip)"), and
// coin and history listings come back empty. Dropping the nullish bounds restores the
// meaning bdb expects. In-memory nodes (--memory=true) do not use leveldown at all.
'use strict';

const { createRequire } = require('module');

let LevelDOWN = null;
try {
  // Resolve from bcoin's entry script (process.argv[1]), i.e. in the install's node_modules.
  LevelDOWN = createRequire(process.argv[1])('leveldown');
} catch (err) {
  LevelDOWN = null;
}

if (LevelDOWN && LevelDOWN.prototype && !LevelDOWN.prototype.__gridminerNullRange) {
  const RANGE_KEYS = ['gt', 'gte', 'lt', 'lte'];
  const iterator = LevelDOWN.prototype.iterator;
  LevelDOWN.prototype.iterator = function (options) {
    if (options && typeof options === 'object') {
      options = { ...options };
      for (const key of RANGE_KEYS) {
        if (options[key] == null)
          delete options[key];
      }
    }
    return iterator.call(this, options);
  };
  LevelDOWN.prototype.__gridminerNullRange = true;
}
