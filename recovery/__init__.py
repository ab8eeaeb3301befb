"""nvmf_phoenix.recovery"""
