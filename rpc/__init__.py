"""nvmf_phoenix.rpc"""
