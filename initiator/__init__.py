"""nvmf_phoenix.initiator"""
