def test_mine_101_blocks_and_spend_a_coinbase(regtest_node, mine_blocks):
    blocks = mine_blocks(101, regtest_node.new_address("legacy"))  # the coinbases pay the node's wallet
    coinbases = {regtest_node.call("getblock", h)["tx"][0] for h in blocks}
    txid = regtest_node.wallet_call("sendtoaddress", regtest_node.new_address("legacy"), 10)
    regtest_node.wait_for_mempool(txid)  # the node accepted the spend
    spent = {vin["txid"] for vin in regtest_node.call("getrawtransaction", txid, True)["vin"]}
    assert spent <= coinbases  # what it spends are coinbases mined above
    [block] = mine_blocks(1)  # gridminer's kernel mines the spend into the next block
    assert txid in regtest_node.call("getblock", block)["tx"]
